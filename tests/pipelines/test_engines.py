"""beam_curator on real distributed engines: Apache Flink (its embedded mini-cluster, and a standalone
cluster of a JobManager and two TaskManagers as separate processes) and Apache Spark (`local[2]`).
Every output file is byte-identical to the FnApiRunner's run of the same command, manifests included;
a TaskManager killed mid-run is recovered by Flink's restart strategy, and `--resume` after the whole
cluster died finishes the run.

The engines come from engines/ (`python3 dev.py flink fetch`: Maven builds the job servers, pip brings
Flink's distribution, into .cache/engines). Without Java and Maven these tests skip, unless
BEAM_CURATOR_REQUIRE_ENGINES is set (CI sets it), where they fail.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.support.helpers import Sample, build_dataset, write_tar
from tests.support.output import digests, temporary_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".cache", "engines")
SHARDS = 6
# A filter that drops some images (--min-size), a stage that can be slowed down (to kill a worker
# mid-run), tars of 4.
CURATE = ["--min-size", "56", "--stage", "tests.support.stage_examples:slow", "--images-per-tar", "4",
          "--dali-batch-size", "4", "--num-threads", "1", "--no-progress", "--no-report"]
SLOW = {"BEAM_CURATOR_TEST_SLOW_SECONDS": "0.3"}

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def artifacts():
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("BEAM_CURATOR_REQUIRE_ENGINES"):
            pytest.fail(f"the engine tests are required here (BEAM_CURATOR_REQUIRE_ENGINES) but {missing} are missing")
        pytest.skip(f"no {' or '.join(missing)} on this machine: the Flink and Spark tests need Java 17 and Maven")
    from engines import cluster

    return cluster.fetch(CACHE)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shards with a broken sample, small images the size filter drops, and a byte copy of an image
    in another shard (for dedup); the FnApiRunner's curate, dedup and prune of them."""
    root = tmp_path_factory.mktemp("engines")
    dataset = build_dataset(root / "input", SHARDS - 1, 8)
    copied = dataset.samples[2]  # 80 x 64: the size filter keeps it
    write_tar(str(root / "input" / "shard-99999.tar"),
              [Sample("broken", {"jpg": b"\xff\xd8\xff\xe0" + b"\x17" * 200, "txt": b"a broken one"}),
               Sample("copy", dict(copied.members))])
    reference = _run_all(root, "reference", ["--runner=FnApiRunner"])
    return root, reference


def _beam_curator(*argv, env=None, timeout=600):
    done = subprocess.run([sys.executable, "-m", "beam_curator", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    assert done.returncode == 0, f"beam-curator {argv[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _curate(root, out, runner, *extra) -> list[str]:
    """The arguments of beam-curator curate of the input into out."""
    return ["curate", str(root / "input"), "--output", str(out), *CURATE, *runner, *extra]


def _run_all(root, name, runner, env=None) -> dict[str, str]:
    """curate, dedup (exact) and prune with these Beam options; the three outputs' files. Each run works in
    the same folder, moved to root/name afterwards: prune's output names digest its sources' paths."""
    out = root / "work"
    curated, removal, pruned = str(out / "curated"), str(out / "removal"), str(out / "pruned")
    _beam_curator(*_curate(root, curated, runner), env=env)
    _beam_curator("dedup", curated, "--method", "exact", "--output", removal, *runner, env=env)
    _beam_curator("prune", curated, "--remove-duplicates", removal, "--output", pruned, "--no-progress",
                  "--no-report", *runner, env=env)
    stats = _stats(curated)
    assert stats["reconciles"] and stats["images_failed"] == 1 and stats["images_filtered"] > 0
    assert _stats(pruned)["images_filtered"] == 1  # the copy
    files = {**_files(curated, "curated"), **_files(removal, "removal"), **_files(pruned, "pruned")}
    os.rename(out, root / name)
    return files


def _files(directory, prefix: str) -> dict[str, str]:
    """Every file's sha256, but what a run writes about itself (_stats.json, _SUCCESS, _dedup.json: times)."""
    assert not temporary_files(directory), temporary_files(directory)
    return {f"{prefix}/{path}": digest for path, digest in digests(directory, run_files=False, report=False).items()
            if path != "_dedup.json"}


def _stats(directory) -> dict:
    with open(os.path.join(directory, "_stats.json")) as handle:
        return json.load(handle)


def test_embedded_flink_writes_the_bytes_of_the_local_runner(world, artifacts):
    from engines import cluster

    root, reference = world
    assert _run_all(root, "flink-local", cluster.local_flink_options(artifacts.flink_job_server_jar)) == reference


def test_spark_writes_the_bytes_of_the_local_runner(world, artifacts):
    from engines import cluster

    root, reference = world
    assert _run_all(root, "spark", cluster.local_spark_options(artifacts.spark_job_server_jar)) == reference


@pytest.fixture(scope="module")
def flink_cluster(artifacts, tmp_path_factory):
    """A standalone Flink cluster: a JobManager and two TaskManagers, each its own JVM, with one slot each,
    so that a job of parallelism 2 runs on both."""
    from engines import cluster

    with cluster.FlinkCluster(str(tmp_path_factory.mktemp("flink-cluster")), artifacts.flink_home,
                              taskmanagers=2, slots=1) as running:
        yield running


def _on(flink_cluster, artifacts, **worker_env) -> tuple[list[str], dict[str, str]]:
    """Beam options for the cluster (its SDK workers import tests.support), and the command's environment."""
    options = flink_cluster.beam_options(artifacts.flink_job_server_jar, sys.executable,
                                         env={"PYTHONPATH": ROOT, **worker_env})
    return options, {**flink_cluster.env, **worker_env}


def test_standalone_flink_writes_the_bytes_of_the_local_runner(world, artifacts, flink_cluster):
    root, reference = world
    options, env = _on(flink_cluster, artifacts)
    # an option only the job server knows (one that batch jobs do not use) passes the command's check
    # and reaches the job
    options.append("--max_bundle_time_mills=1234")
    assert _run_all(root, "flink-standalone", options, env=env) == reference
    ran_on = flink_cluster.job_taskmanagers()  # the last job's subtasks per TaskManager
    assert len(ran_on) == 2, ran_on
    last = flink_cluster.jobs()[-1]["jid"]
    assert flink_cluster.rest(f"jobs/{last}/config")["execution-config"]["user-config"]["maxBundleTimeMills"] == "1234"


def _committed(out) -> int:
    return len(glob.glob(os.path.join(str(out), "_partitions", "*.json")))


def _start(argv, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "beam_curator", *argv], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_until_reading(flink_cluster, process, since: float) -> None:
    """Until the job started after `since` reads on the cluster (its reader's subtasks are running)."""
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        jobs = [job for job in flink_cluster.jobs() if job["start-time"] >= since * 1000 and job["state"] == "RUNNING"]
        if jobs:
            vertices = flink_cluster.rest(f"jobs/{jobs[-1]['jid']}")["vertices"]
            if any("ImageReader" in vertex["name"] and vertex["status"] == "RUNNING" for vertex in vertices):
                return
        time.sleep(0.2)
    raise AssertionError(f"the job never ran: {process.communicate()[0][-3000:] if process.poll() is not None else ''}")


def _start_and_wait_for_a_commit(argv, env, out) -> subprocess.Popen:
    """Start beam-curator argv; return once it committed a partition, before the run finished (on Flink the
    keyed writer commits the partitions one after the other at the end, so maybe all of them)."""
    process = _start(argv, env)
    deadline = time.monotonic() + 300
    while _committed(out) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None and _committed(out) > 0 and not os.path.exists(out / "_SUCCESS"), (
        f"not midway: {_committed(out)} partitions committed; {process.communicate()[0][-3000:] if process.poll() is not None else ''}")
    return process


def test_a_killed_taskmanager_is_recovered_exactly_once(world, artifacts, flink_cluster):
    root, reference = world
    out = root / "taskmanager-killed"
    options, env = _on(flink_cluster, artifacts, **SLOW)
    since = time.time()
    process = _start(_curate(root, out, options), env)
    _wait_until_reading(flink_cluster, process, since)
    time.sleep(2)  # mid-read: the slow stage makes reading last several seconds
    flink_cluster.kill_taskmanager()  # it runs half of the job: every TaskManager has one slot
    flink_cluster.add_taskmanager()  # its replacement (as Kubernetes would start), for the restart's slots
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-4000:]
    assert flink_cluster.job_exceptions(), "the job did not see the TaskManager die"
    assert _files(out, "curated") == {name: digest for name, digest in reference.items() if name.startswith("curated/")}
    stats = _stats(out)
    assert stats["reconciles"] and stats["images_failed"] == 1


def test_resume_after_the_whole_cluster_died(world, artifacts, flink_cluster, tmp_path):
    from engines import cluster

    root, reference = world
    out = root / "cluster-killed"
    # Flink's client (in the job server) retries a refused REST call 20 times, 3 s apart (rest.retry.*): a minute
    # before the launcher learns that the cluster is gone. Its configuration comes from FLINK_CONF_DIR.
    client_conf = tmp_path / "client-conf"
    client_conf.mkdir()
    (client_conf / "config.yaml").write_text('{"rest.retry.max-attempts": 2, "rest.retry.delay": 500}\n')
    with cluster.FlinkCluster(str(tmp_path / "first"), artifacts.flink_home, taskmanagers=2, slots=1) as first:
        options, env = _on(first, artifacts, **SLOW)
        process = _start_and_wait_for_a_commit(_curate(root, out, options), {**env, "FLINK_CONF_DIR": str(client_conf)},
                                               out)
        first.kill_all()
        try:
            output = process.communicate(timeout=300)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
        assert process.returncode != 0, output[-3000:]
    committed = _committed(out)
    assert 0 < committed <= SHARDS and not os.path.exists(out / "_SUCCESS")
    (killed_job_folder,) = glob.glob(str(out / ".beam_curator-temp-*"))
    options, env = _on(flink_cluster, artifacts)  # another cluster: the module's
    done = _beam_curator(*_curate(root, out, options, "--resume"), env=env)
    # A remote runner's job may outlive its command, so its folder is named, not removed (docs/OUTPUT.md).
    assert f"{killed_job_folder} was left by another run and is kept" in done.stderr
    shutil.rmtree(killed_job_folder)
    stats = _stats(out)
    assert stats["resumed"]["partitions"] >= committed and stats["reconciles"]
    assert _files(out, "curated") == {name: digest for name, digest in reference.items() if name.startswith("curated/")}
