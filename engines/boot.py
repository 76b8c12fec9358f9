"""The Beam Python SDK harness "boot" program for --environment_type=PROCESS, without Docker or Beam's Go
boot binary: how a Flink TaskManager (or Spark executor) starts an SDK worker on this machine.

The boot contract: the runner starts the environment's `command` (engines/boot.sh, which runs this file
with $BEAM_BOOT_PYTHON) as

    boot.sh --id=<worker id> --provision_endpoint=H:P --logging_endpoint=H:P --artifact_endpoint=H:P
            --control_endpoint=H:P [--semi_persist_dir=DIR]

plus the `env` of the environment_config in its environment. The boot asks the provision service
(GetProvisionInfo, with metadata worker_id=<id>) for the pipeline options and the endpoints, then replaces
itself (exec, same pid, so the runner's kill reaches the worker) with
`python -m apache_beam.runners.worker.sdk_worker_main`, configured by the environment variables it reads:
WORKER_ID, PIPELINE_OPTIONS, CONTROL_API_SERVICE_DESCRIPTOR, LOGGING_API_SERVICE_DESCRIPTOR,
STATUS_API_SERVICE_DESCRIPTOR (when the runner offers one), SEMI_PERSISTENT_DIRECTORY, RUNNER_CAPABILITIES.

Staged artifacts are NOT retrieved or installed (and so no --save_main_session pickle is loaded): the
python running this file must already hold apache_beam and the pipeline's code, as with LOOPBACK. The
worker's semi-persistent directory is $BEAM_BOOT_DIR/<id>-<pid> (a new temporary directory without it).
Standard library + apache_beam (grpc, protobuf) only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc, endpoints_pb2
from google.protobuf import json_format, text_format


def _descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Beam SDK harness boot for PROCESS environments")
    for name in ("id", "provision_endpoint", "logging_endpoint", "artifact_endpoint", "control_endpoint",
                 "semi_persist_dir"):
        parser.add_argument("--" + name, default=None)
    args, _ = parser.parse_known_args(argv)
    if not args.provision_endpoint:
        sys.exit("boot: --provision_endpoint is required")
    with grpc.insecure_channel(args.provision_endpoint) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", args.id or "")]).info
    semi_persistent = args.semi_persist_dir
    if not semi_persistent:
        root = os.environ.get("BEAM_BOOT_DIR")
        if root:
            semi_persistent = os.path.join(root, f"{args.id}-{os.getpid()}")
            os.makedirs(semi_persistent, exist_ok=True)
        else:
            semi_persistent = tempfile.mkdtemp(prefix="beam-sdk-")
    env = dict(os.environ)
    env.update({
        "WORKER_ID": args.id or "",
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "CONTROL_API_SERVICE_DESCRIPTOR": _descriptor(info.control_endpoint.url or args.control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": _descriptor(info.logging_endpoint.url or args.logging_endpoint),
        "SEMI_PERSISTENT_DIRECTORY": semi_persistent,
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    })
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = _descriptor(info.status_endpoint.url)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


if __name__ == "__main__":
    main(sys.argv[1:])
