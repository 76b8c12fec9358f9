#!/usr/bin/env python3
"""Set up and run beam_curator on a fresh machine that has only python3.

    python3 dev.py demo    # set up, make the sample dataset, curate it, check the counts reconcile
    python3 dev.py test    # set up, lint, type-check, run the test suite (extra arguments go to pytest)
    python3 dev.py test --fast   # the unit tests only (seconds): the inner loop
    python3 dev.py lint    # ruff
    python3 dev.py typecheck     # mypy on an installed copy of the package (build/typecheck)
    python3 dev.py bench   # set up, run the benchmark (benchmarks/run.py; extra arguments go to it)
    python3 dev.py fuzz-decoder  # set up, run a crash-fuzz campaign on the decoder (tests/support/decoder_fuzz.py)
    python3 dev.py gpu-check     # set up, run everything that needs an NVIDIA GPU (benchmarks/gpu_check.py)
    python3 dev.py flink fetch   # build Beam's Flink and Spark job servers (Maven), install Flink 1.19.3 (pip)
    python3 dev.py flink start [--taskmanagers N]  # a local Flink cluster in the background; prints Beam options
    python3 dev.py flink stop|status   # (engines/cluster.py; everything lives in .cache/engines, Java 17 + Maven)
    python3 dev.py setup   # only create .venv and install the package with its test extras

Everything is installed into .venv from setup.py; it is reinstalled when setup.py changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
PYTHON = os.path.join(BIN, "python")
STAMP = os.path.join(VENV, ".beam_curator-installed")


def _run(*command: str) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def setup() -> None:
    with open(os.path.join(ROOT, "setup.py"), "rb") as handle:
        wanted = hashlib.sha256(handle.read()).hexdigest()
    if os.path.exists(STAMP):
        with open(STAMP) as stamp:
            if stamp.read() == wanted:
                return
    if not os.path.exists(PYTHON):
        venv.EnvBuilder(with_pip=True).create(VENV)
    _run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[test,bench]")
    with open(STAMP, "w") as handle:
        handle.write(wanted)


def demo() -> None:
    setup()
    data = os.path.join(ROOT, "demo")
    shutil.rmtree(data, ignore_errors=True)
    cli = [PYTHON, "-m", "beam_curator"]
    _run(*cli, "make-sample", os.path.join(data, "input"))
    _run(*cli, "curate", os.path.join(data, "input"), "--output", os.path.join(data, "output"))
    with open(os.path.join(data, "output", "_stats.json")) as handle:
        stats = json.load(handle)
    if stats["samples_read"] != stats["images_written"] or stats["images_written"] == 0:
        sys.exit(f"demo: counts do not reconcile: read {stats['samples_read']}, written {stats['images_written']}")
    print(f"demo: read {stats['samples_read']} = written {stats['images_written']}; output in {data}/output")


def lint() -> None:
    _run(PYTHON, "-m", "ruff", "check", ".")


def typecheck() -> None:
    """mypy over an installed copy: there beam_curator.transforms is a real subpackage (in the source
    tree setup.py maps it from transforms/, which static tools do not follow). mypy.ini says how."""
    target = os.path.join(ROOT, "build", "typecheck")
    shutil.rmtree(target, ignore_errors=True)
    _run(PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", target, ".")
    print(f"+ MYPYPATH={target} mypy -p beam_curator", flush=True)
    subprocess.run([PYTHON, "-m", "mypy", "-p", "beam_curator"], cwd=ROOT, check=True,
                   env={**os.environ, "MYPYPATH": target})


def test(pytest_args: list[str]) -> None:
    setup()
    if pytest_args[:1] == ["--fast"]:  # the unit tests: plain functions, no pipeline
        _run(PYTHON, "-m", "pytest", "-q", "tests/unit", *pytest_args[1:])
        return
    if not pytest_args:  # the whole suite: lint and type-check first
        lint()
        typecheck()
    _run(PYTHON, "-m", "pytest", *(pytest_args or ["-q", "tests"]))


def bench(bench_args: list[str]) -> None:
    setup()
    _run(PYTHON, os.path.join("benchmarks", "run.py"), *bench_args)


def fuzz_decoder(fuzz_args: list[str]) -> None:
    setup()
    _run(PYTHON, "-m", "tests.support.decoder_fuzz", *fuzz_args)


def flink(flink_args: list[str]) -> None:
    """engines/cluster.py: fetch the engines, start/stop/status a standalone Flink cluster (.cache/engines)."""
    if flink_args[:1] in (["fetch"], ["start"]):
        setup()  # the job servers' SDK workers run .venv's python
    from engines import cluster

    try:
        code = cluster.main(flink_args, cache_dir=os.path.join(ROOT, ".cache", "engines"), python=PYTHON)
    except RuntimeError as error:
        sys.exit(f"flink: {error}")
    if code:
        sys.exit(code)


def main() -> None:
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "setup":
        setup()
    elif command == "demo":
        demo()
    elif command == "test":
        test(rest)
    elif command == "lint":
        setup()
        lint()
    elif command == "typecheck":
        setup()
        typecheck()
    elif command == "bench":
        bench(rest)
    elif command == "fuzz-decoder":
        fuzz_decoder(rest)
    elif command == "flink":
        flink(rest)
    elif command == "gpu-check":
        setup()
        _run(PYTHON, os.path.join("benchmarks", "gpu_check.py"), *rest)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as error:
        sys.exit(error.returncode)
