# beam_curator on a CUDA 12 runtime. A later step makes this the Dataflow custom SDK container and the
# Flex Template launcher image; for now it installs the package and runs the CLI.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/beam_curator
COPY setup.py README.md ./
COPY beam_curator ./beam_curator
COPY transforms ./transforms
RUN pip install .

ENTRYPOINT ["beam-curator"]
