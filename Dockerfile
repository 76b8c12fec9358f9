# One image for two jobs:
#  - the Dataflow custom SDK container of GPU workers (ENTRYPOINT /opt/apache/beam/boot), and
#  - the Flex Template launcher image (the launcher binary + FLEX_TEMPLATE_PYTHON_PY_FILE).
# Versions must agree with setup.py; tests/pipelines/test_deployment.py checks that they do.
ARG BEAM_VERSION=2.77.0
ARG PYTHON_VERSION=3.11

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS template_launcher

# CUDA 12 and cuDNN 9 come as wheels with .[gpu] (below): the base image needs no CUDA libraries.
FROM nvidia/cuda:12.4.1-base-ubuntu22.04
ARG BEAM_VERSION
ARG PYTHON_VERSION
ARG DALI_VERSION=2.4.0

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python${PYTHON_VERSION} -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Beam's worker boot program, and Dataflow's Flex Template launcher.
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
COPY --from=template_launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

RUN pip install --upgrade pip \
    && pip install "apache-beam[gcp,aws]==${BEAM_VERSION}" "nvidia-dali-cuda120==${DALI_VERSION}"

WORKDIR /opt/beam_curator
COPY setup.py README.md metadata.json ./
COPY beam_curator ./beam_curator
COPY transforms ./transforms
# [gpu]: onnxruntime-gpu (CUDA 12, as DALI's cuda120 build) with its CUDA 12 and cuDNN 9 wheels, for the
# model stages; torch is not needed.
RUN pip install ".[gpu]" && pip check

ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/beam_curator/beam_curator/flex_template.py
ENTRYPOINT ["/opt/apache/beam/boot"]
