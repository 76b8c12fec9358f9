"""Apache Flink and Spark for beam_curator's pipelines on this machine: fetch the engines, run a local
standalone Flink cluster, and give the Beam options that run a pipeline on each.

Standard library only: dev.py imports it under the bare system python3, pytest under .venv.

    fetch(cache_dir) -> Artifacts     Maven builds the Flink and Spark job servers (engines/*/jobserver/pom.xml),
                                      pip brings the Flink 1.19.3 distribution; idempotent (stamp files)
    FlinkCluster(root_dir, flink_home, taskmanagers=2)
        .start() / .stop()            1 JobManager + N TaskManagers, each its own JVM; stop leaves nothing behind
        .kill_taskmanager()           SIGKILL one TaskManager JVM (its SDK workers exit by themselves)
        .kill_all()                   SIGKILL the whole cluster, SDK workers included ("the cluster died")
        .beam_options(jar, python)    --runner=FlinkRunner on this cluster, SDK workers in PROCESS environments
    local_flink_options(jar)          Flink's embedded mini-cluster ([local]), LOOPBACK workers
    local_spark_options(jar)          Spark local[2], LOOPBACK workers
    main(argv, cache_dir=...)         fetch | start [--taskmanagers N] | stop | status   (python3 dev.py flink ...)

Versions: the runner is Beam Java 2.70 (the newest Flink/Spark runner served by Maven Central here; no
job-server jar is served at all, see the poms) for Flink 1.19, so the cluster is Flink 1.19.3; the Python
SDK is the project's (2.77). The embedded and standalone Flink runs and Spark were verified with it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
FLINK_VERSION = "1.19.3"
FLINK_RUNNER_VERSION = "1.19"  # --flink_version: the Flink the job server's runner was built for
BOOT = os.path.join(HERE, "boot.sh")
# Every process of a cluster carries MARKER=<root_dir> in its environment (children inherit it): stop() finds
# stragglers by it. Give it to other processes too (marker_env) and kill_marked / stop() reaps them as well.
MARKER = "BEAM_CURATOR_ENGINES_TAG"


class Artifacts(NamedTuple):
    flink_job_server_jar: str
    spark_job_server_jar: str
    flink_home: str


# ---------------------------------------------------------------------------------------------- fetch


def fetch(cache_dir: str, *, python: str | None = None, verbose: bool = False) -> Artifacts:
    """Build both job servers and install Flink's distribution under cache_dir; skip what is done.

    cache_dir/m2 is Maven's local repository (self-contained: ~/.m2 is not used),
    cache_dir/{flink,spark}-jobserver/ the thin job-server jars and their lib/,
    cache_dir/flink-1.19.3/pyflink the Flink distribution (FLINK_HOME: bin/ conf/ lib/).
    Each part is rebuilt when its stamp (the pom's sha256 / the versions) differs, into a temporary
    folder renamed at the end, so an interrupted fetch is redone. A lock file serialises concurrent fetches.
    """
    cache_dir = os.path.abspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    with _locked(os.path.join(cache_dir, ".fetch.lock")):
        flink_jar = _job_server(cache_dir, "flink", verbose)
        spark_jar = _job_server(cache_dir, "spark", verbose)
        flink_home = _flink_distribution(cache_dir, python or sys.executable, verbose)
    return Artifacts(flink_jar, spark_jar, flink_home)


@contextlib.contextmanager
def _locked(path: str):
    import fcntl  # POSIX only, like the rest of this module

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stamped(folder: str, stamp: str) -> bool:
    try:
        with open(os.path.join(folder, ".stamp")) as handle:
            return handle.read() == stamp
    except OSError:
        return False


def _install(partial: str, folder: str, stamp: str) -> None:
    with open(os.path.join(partial, ".stamp"), "w") as handle:
        handle.write(stamp)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(partial, folder)


def _job_server(cache_dir: str, engine: str, verbose: bool) -> str:
    pom = os.path.join(HERE, engine, "jobserver", "pom.xml")
    with open(pom, "rb") as handle:
        stamp = hashlib.sha256(handle.read()).hexdigest()
    folder = os.path.join(cache_dir, f"{engine}-jobserver")
    jar = os.path.join(folder, f"beam-{engine}-job-server.jar")
    if _stamped(folder, stamp) and os.path.exists(jar):
        return jar
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"fetch: no `{tool}` on PATH: the {engine} job server needs Java 17 and Maven")
    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    command = ["mvn", "-B", *([] if verbose else ["-q"]), "-f", pom, "package",
               f"-Dmaven.repo.local={os.path.join(cache_dir, 'm2')}", f"-Djobserver.out={partial}"]
    _check(command, f"building the {engine} job server")
    if not os.path.exists(os.path.join(partial, f"beam-{engine}-job-server.jar")):
        raise RuntimeError(f"fetch: Maven finished but wrote no {partial}/beam-{engine}-job-server.jar")
    _install(partial, folder, stamp)
    return jar


def _flink_distribution(cache_dir: str, python: str, verbose: bool) -> str:
    stamp = f"apache-flink=={FLINK_VERSION} apache-flink-libraries=={FLINK_VERSION}"
    folder = os.path.join(cache_dir, f"flink-{FLINK_VERSION}")
    home = os.path.join(folder, "pyflink")
    if _stamped(folder, stamp) and os.path.exists(os.path.join(home, "bin", "jobmanager.sh")):
        return home
    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    # --no-deps: pyflink pins an old apache-beam; only its JVM distribution (bin/ conf/ lib/) is used.
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--no-compile",
               *([] if verbose else ["--quiet"]), "--target", partial,
               f"apache-flink=={FLINK_VERSION}", f"apache-flink-libraries=={FLINK_VERSION}"]
    _check(command, "installing Flink's distribution")
    partial_home = os.path.join(partial, "pyflink")
    for needed in ("bin/jobmanager.sh", "bin/taskmanager.sh", f"lib/flink-dist-{FLINK_VERSION}.jar"):
        if not os.path.exists(os.path.join(partial_home, needed)):
            raise RuntimeError(f"fetch: pip installed Flink but {partial_home}/{needed} is missing")
    for name in os.listdir(os.path.join(partial_home, "bin")):
        if name.endswith(".sh"):
            os.chmod(os.path.join(partial_home, "bin", name), 0o755)
    _install(partial, folder, stamp)
    return home


def _check(command: list[str], what: str) -> None:
    print("+", shlex.join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fetch: {what} failed (exit {done.returncode}):\n{done.stdout[-6000:]}")


# ------------------------------------------------------------------------------------- Beam options


def local_flink_options(job_server_jar: str, *, parallelism: int = 2) -> list[str]:
    """Flink's embedded mini-cluster inside the job server's JVM; SDK workers in the submitting process."""
    return ["--runner=FlinkRunner", "--flink_master=[local]", f"--flink_job_server_jar={job_server_jar}",
            f"--flink_version={FLINK_RUNNER_VERSION}", "--environment_type=LOOPBACK",
            f"--parallelism={parallelism}"]


def local_spark_options(spark_job_server_jar: str, *, master: str = "local[2]") -> list[str]:
    """Spark in the job server's JVM (local[2]); SDK workers in the submitting process."""
    return ["--runner=SparkRunner", f"--spark_job_server_jar={spark_job_server_jar}",
            f"--spark_master_url={master}", "--environment_type=LOOPBACK"]


def process_environment_options(python: str, *, env: dict[str, str] | None = None) -> list[str]:
    """--environment_type=PROCESS: each TaskManager starts its SDK workers with engines/boot.sh, which runs
    engines/boot.py with `python` (absolute; it must have apache_beam and the pipeline's code)."""
    config = {"command": BOOT, "env": {"BEAM_BOOT_PYTHON": os.path.abspath(python), **(env or {})}}
    return ["--environment_type=PROCESS", "--environment_config=" + json.dumps(config)]


# -------------------------------------------------------------------------------------- the cluster


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


class FlinkCluster:
    """A standalone Flink cluster on localhost: one JobManager and N TaskManagers, each its own JVM
    (`jobmanager.sh` / `taskmanager.sh start-foreground`, no ssh), everything under root_dir:
    conf/ (config.yaml), log/ (per-process logs), state/ (pids, tmp dirs, blobs, SDK workers' dirs).

    Ports: REST and JobManager RPC are free ports picked at construction (or given); the rest are
    random (0), so clusters of two test runs do not collide. Each process is its own process group,
    and every process (SDK workers included) carries BEAM_CURATOR_FLINK_CLUSTER=root_dir in its
    environment, which is how stop() finds leftovers.
    """

    def __init__(self, root_dir: str, flink_home: str, *, taskmanagers: int = 2, slots: int = 2,
                 rest_port: int = 0, rpc_port: int = 0, parallelism: int = 2,
                 taskmanager_memory: str = "6144m", network_memory: str = "320m", task_off_heap_memory: str = "768m",
                 jobmanager_memory: str = "1024m", restart_attempts: int = 10, restart_delay_s: int = 5,
                 heartbeat_interval_ms: int = 2000, heartbeat_timeout_ms: int = 10000,
                 startup_timeout_s: float = 120.0) -> None:
        self.root_dir = os.path.abspath(root_dir)
        self.flink_home = os.path.abspath(flink_home)
        self.taskmanager_count = taskmanagers
        self.slots = slots
        self.rest_port = rest_port or free_port()
        self.rpc_port = rpc_port or free_port()
        self.parallelism = parallelism
        self.taskmanager_memory = taskmanager_memory
        self.network_memory = network_memory
        self.task_off_heap_memory = task_off_heap_memory
        self.jobmanager_memory = jobmanager_memory
        self.restart_attempts = restart_attempts
        self.restart_delay_s = restart_delay_s
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.startup_timeout_s = startup_timeout_s
        self.conf_dir = os.path.join(self.root_dir, "conf")
        self.log_dir = os.path.join(self.root_dir, "log")
        self.state_dir = os.path.join(self.root_dir, "state")
        self._processes: list[dict[str, Any]] = []  # {"role", "pid", "log"}; in order of start
        self._popens: dict[int, subprocess.Popen] = {}

    # -- lifecycle

    @property
    def rest_address(self) -> str:
        return f"localhost:{self.rest_port}"

    def start(self) -> FlinkCluster:
        """Write the config, start the JobManager and the TaskManagers, wait until all are registered."""
        if self._processes:
            raise RuntimeError("FlinkCluster.start: already started")
        for folder in (self.conf_dir, self.log_dir, self.state_dir):
            os.makedirs(folder, exist_ok=True)
        self._write_conf()
        try:
            self._spawn("jobmanager")
            for _ in range(self.taskmanager_count):
                self._spawn("taskmanager")
            self.wait_for_taskmanagers(self.taskmanager_count, self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def add_taskmanager(self) -> int:
        """Start one more TaskManager (e.g. after kill_taskmanager); its pid. Does not wait for it."""
        return self._spawn("taskmanager")

    @property
    def env(self) -> dict[str, str]:
        """Put this in the environment of the pipelines run on the cluster: stop() then also kills what they
        leave behind (a job server whose parent left with os._exit, as the beam-curator command does)."""
        return marker_env(self.root_dir)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every process group of the cluster, SIGKILL what is left after timeout_s, then SIGKILL any
        process still carrying this cluster's marker (orphaned SDK workers, processes started with .env).
        Safe to call twice."""
        # A recorded pid is only signalled while it is alive and carries the marker (a cluster.json from
        # before a reboot must not hit recycled pids); anything else of the cluster is found by its marker.
        groups = [p["pid"] for p in self._processes if self._alive(p["pid"]) and _is_marked(p["pid"], self.root_dir)]
        for pid in groups:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(self._alive(pid) for pid in groups):
            time.sleep(0.2)
        for pid in groups:
            _signal_group(pid, signal.SIGKILL)
        kill_marked(self.root_dir)
        for popen in self._popens.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
        self._processes, self._popens = [], {}
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._state_file)

    def __enter__(self) -> FlinkCluster:
        return self if self._processes else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- failures

    def taskmanager_pids(self) -> list[int]:
        """Pids of the TaskManager JVMs still alive, oldest first."""
        return [p["pid"] for p in self._processes if p["role"] == "taskmanager" and self._alive(p["pid"])]

    def jobmanager_pid(self) -> int | None:
        alive = [p["pid"] for p in self._processes if p["role"] == "jobmanager" and self._alive(p["pid"])]
        return alive[0] if alive else None

    def kill_taskmanager(self, pid: int | None = None) -> int:
        """SIGKILL one TaskManager JVM (the oldest alive, or `pid`), as a crash would; its pid. Its SDK
        workers are not killed: they lose their control channel and exit by themselves (seen < 15 s)."""
        alive = self.taskmanager_pids()
        if not alive or (pid is not None and pid not in alive):
            raise RuntimeError(f"kill_taskmanager: no such live TaskManager (alive: {alive})")
        victim = alive[0] if pid is None else pid
        next(p for p in self._processes if p["pid"] == victim)["killed"] = True  # not a failed start
        os.kill(victim, signal.SIGKILL)
        self._reap(victim)
        return victim

    def kill_all(self) -> list[int]:
        """SIGKILL the whole cluster at once: the JobManager, the TaskManagers and their SDK workers (each
        JVM's process group), not the pipelines' own processes (their job servers); the pids of the JVMs that
        were alive. stop() afterwards is still fine (and cleans up the rest)."""
        recorded = {p["pid"] for p in self._processes}
        pids = [pid for pid in recorded if self._alive(pid) and _is_marked(pid, self.root_dir)]
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)
        for pid in marked_processes(self.root_dir):  # e.g. the orphaned workers of a TaskManager killed before
            with contextlib.suppress(OSError):
                if os.getpgid(pid) in recorded:
                    os.kill(pid, signal.SIGKILL)
        for pid in pids:
            self._reap(pid)
        return pids

    # -- REST

    def rest(self, path: str, timeout_s: float = 5.0) -> Any:
        """GET http://localhost:<rest>/<path> as JSON."""
        with urllib.request.urlopen(f"http://{self.rest_address}/{path.lstrip('/')}", timeout=timeout_s) as reply:
            return json.load(reply)

    def cancel(self, job_id: str) -> None:
        """Cancel a job (REST PATCH /jobs/<id>?mode=cancel)."""
        request = urllib.request.Request(f"http://{self.rest_address}/jobs/{job_id}?mode=cancel", method="PATCH")
        urllib.request.urlopen(request, timeout=5.0).close()

    def run_probe(self, command: list[str], cwd: str, timeout_s: float) -> str:
        """Run a command that submits one job to this cluster (the benchmarks' limit probes): "finished",
        "failed: <the line that names the cause>", or "hung" after timeout_s (its job is then cancelled,
        freeing the slots for the next)."""
        try:
            done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, **self.env})
        except subprocess.TimeoutExpired:
            for job in self.jobs():
                if job["state"] == "RUNNING":
                    self.cancel(job["jid"])
            return "hung"
        if done.returncode == 0:
            return "finished"
        causes = [line for line in done.stderr.splitlines() if "Exception" in line or "Error:" in line]
        return "failed: " + (causes[-1].strip()[:300] if causes else done.stderr[-300:])

    def taskmanagers(self) -> list[dict[str, Any]]:
        """The TaskManagers registered with the JobManager (REST /taskmanagers: id, slotsNumber, ...)."""
        return self.rest("taskmanagers")["taskmanagers"]

    def jobs(self) -> list[dict[str, Any]]:
        """REST /jobs/overview, oldest first: jid, name, state, start-time, duration, ..."""
        return sorted(self.rest("jobs/overview")["jobs"], key=lambda job: job["start-time"])

    def job_taskmanagers(self, job_id: str | None = None) -> dict[str, int]:
        """For a job (default: the newest), TaskManager id -> how many of its vertices ran subtasks there
        (TaskManagers since killed included)."""
        job_id = job_id or self.jobs()[-1]["jid"]
        counts: dict[str, int] = {}
        for vertex in self.rest(f"jobs/{job_id}")["vertices"]:
            where = self.rest(f"jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")["taskmanagers"]
            for tm in {entry["taskmanager-id"] for entry in where}:
                counts[tm] = counts.get(tm, 0) + 1
        return counts

    def job_exceptions(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """A job's exception history (each entry: exceptionName, stacktrace, taskName, timestamp, ...)."""
        job_id = job_id or self.jobs()[-1]["jid"]
        return self.rest(f"jobs/{job_id}/exceptions").get("exceptionHistory", {}).get("entries", [])

    def wait_for_taskmanagers(self, count: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        registered = 0
        while time.monotonic() < deadline:
            dead = [p for p in self._processes if not p.get("killed") and not self._alive(p["pid"])]
            if dead:
                raise RuntimeError(f"Flink {dead[0]['role']} (pid {dead[0]['pid']}) exited during start:\n"
                                   + self.log_tail(dead[0]))
            with contextlib.suppress(OSError, ValueError):
                registered = len(self.taskmanagers())
                if registered >= count:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"Flink cluster: {registered} of {count} TaskManagers registered after {timeout_s:.0f} s "
                           f"(REST {self.rest_address}):\n" + "\n".join(self.log_tail(p) for p in self._processes))

    # -- Beam

    def beam_options(self, job_server_jar: str, python: str = sys.executable, *,
                     parallelism: int | None = None, env: dict[str, str] | None = None) -> list[str]:
        """Beam options that run a pipeline on this cluster: the job server (started by the Python
        FlinkRunner for each pipeline) submits to the REST address; each TaskManager starts its SDK
        workers with engines/boot.sh running `python`. `env` is added to the workers' environment."""
        workers = {"BEAM_BOOT_DIR": os.path.join(self.state_dir, "sdk"), **(env or {})}
        return ["--runner=FlinkRunner", f"--flink_master={self.rest_address}",
                f"--flink_job_server_jar={job_server_jar}", f"--flink_version={FLINK_RUNNER_VERSION}",
                *process_environment_options(python, env=workers),
                f"--parallelism={parallelism or self.parallelism}"]

    # -- state for the command line (start in one process, stop in another)

    @property
    def _state_file(self) -> str:
        return os.path.join(self.root_dir, "cluster.json")

    def save(self) -> None:
        state = {"flink_home": self.flink_home, "rest_port": self.rest_port, "rpc_port": self.rpc_port,
                 "taskmanagers": self.taskmanager_count, "slots": self.slots, "parallelism": self.parallelism,
                 "processes": self._processes}
        with open(self._state_file, "w") as handle:
            json.dump(state, handle, indent=1)

    @classmethod
    def attach(cls, root_dir: str) -> FlinkCluster | None:
        """The cluster that `save()` recorded under root_dir (started by another process), or None."""
        try:
            with open(os.path.join(root_dir, "cluster.json")) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            return None
        cluster = cls(root_dir, state["flink_home"], taskmanagers=state["taskmanagers"], slots=state["slots"],
                      rest_port=state["rest_port"], rpc_port=state["rpc_port"], parallelism=state["parallelism"])
        cluster._processes = state["processes"]
        return cluster

    # -- internals

    def log_tail(self, process: dict[str, Any], lines: int = 40) -> str:
        try:
            with open(process["log"], errors="replace") as handle:
                tail = handle.readlines()[-lines:]
        except OSError:
            tail = []
        return f"--- {process['role']} pid {process['pid']}: {process['log']}\n" + "".join(tail)

    def _alive(self, pid: int) -> bool:
        popen = self._popens.get(pid)
        if popen is not None:
            return popen.poll() is None
        return _pid_alive(pid)

    def _reap(self, pid: int) -> None:
        popen = self._popens.get(pid)
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)

    def _spawn(self, role: str) -> int:
        index = sum(1 for p in self._processes if p["role"] == role)
        name = f"{role}-{index}"
        log = os.path.join(self.log_dir, f"{name}.out")
        cwd = os.path.join(self.state_dir, name)  # PROCESS SDK workers inherit it: relative paths land here
        os.makedirs(cwd, exist_ok=True)
        env = {**os.environ, "FLINK_CONF_DIR": self.conf_dir, "FLINK_LOG_DIR": self.log_dir,
               "FLINK_IDENT_STRING": name, MARKER: self.root_dir}
        for variable in ("FLINK_HOME", "FLINK_ENV_JAVA_OPTS", "HADOOP_CLASSPATH", "PYTHONPATH"):
            env.pop(variable, None)
        script = os.path.join(self.flink_home, "bin", f"{role}.sh")
        with open(log, "ab") as output:
            popen = subprocess.Popen(["bash", script, "start-foreground"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self._popens[popen.pid] = popen
        self._processes.append({"role": role, "pid": popen.pid, "log": log})
        return popen.pid

    def _write_conf(self) -> None:
        for name in os.listdir(os.path.join(self.flink_home, "conf")):
            if name.startswith(("log4j", "logback")):
                shutil.copy(os.path.join(self.flink_home, "conf", name), self.conf_dir)
        state = self.state_dir
        for folder in ("tmp", "web", "blob", "sdk"):
            os.makedirs(os.path.join(state, folder), exist_ok=True)
        # config.yaml is YAML; JSON is YAML, so it is written with json (stdlib only). Flink 1.19 reads
        # the flat "a.b.c" keys as well as nested ones.
        config = {
            # the distribution's --add-opens/--add-exports list for Java 17
            "env.java.opts.all": _java_opts(self.flink_home),
            "env.pid.dir": state,
            "jobmanager.bind-host": "localhost",
            "jobmanager.rpc.address": "localhost",
            "jobmanager.rpc.port": self.rpc_port,
            "jobmanager.memory.process.size": self.jobmanager_memory,
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.bind-host": "localhost",
            "taskmanager.host": "localhost",
            "taskmanager.numberOfTaskSlots": self.slots,
            "taskmanager.memory.process.size": self.taskmanager_memory,
            # With the default 10% a lone surviving TaskManager (both subtasks of ~30 Beam vertices) failed
            # the restart with "Insufficient number of network buffers".
            "taskmanager.memory.network.min": self.network_memory,
            "taskmanager.memory.network.max": self.network_memory,
            # Beam's data plane to the SDK workers (gRPC, netty) takes direct memory per element in flight: a
            # batch of 100 photos is ~30 MB, and the default (0) failed 2,000 photos with "OutOfMemoryError:
            # Direct buffer memory".
            "taskmanager.memory.task.off-heap.size": self.task_off_heap_memory,
            # The heap holds what a GroupByKey gathers per key (the keyed writer: a partition's encoded
            # images); managed memory holds Flink's sort buffers, which must fit the largest record (a
            # bundle's encoded images; semantic dedup's sample travels row by row since it failed "Record
            # too large" as one 100 MB record).
            "taskmanager.memory.managed.fraction": 0.3,
            "cluster.evenly-spread-out-slots": True,
            "parallelism.default": self.parallelism,
            "rest.address": "localhost",
            "rest.bind-address": "localhost",
            "rest.port": self.rest_port,
            "blob.server.port": "0",
            "heartbeat.interval": self.heartbeat_interval_ms,
            "heartbeat.timeout": self.heartbeat_timeout_ms,
            # Beam batch jobs take the cluster's restart strategy (--number_of_execution_retries is ignored
            # for batch by the 2.70 runner). The delay is >= heartbeat.timeout, else the attempts are burnt
            # deploying to a dead TaskManager before the JobManager notices it is gone.
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": self.restart_attempts,
            "restart-strategy.fixed-delay.delay": f"{self.restart_delay_s} s",
            "io.tmp.dirs": os.path.join(state, "tmp"),
            "web.tmpdir": os.path.join(state, "web"),
            "blob.storage.directory": os.path.join(state, "blob"),
        }
        with open(os.path.join(self.conf_dir, "config.yaml"), "w") as handle:
            for key, value in config.items():
                handle.write(f"{key}: {json.dumps(value)}\n")
        with open(os.path.join(self.conf_dir, "workers"), "w") as handle:
            handle.write("localhost\n")
        with open(os.path.join(self.conf_dir, "masters"), "w") as handle:
            handle.write(f"localhost:{self.rest_port}\n")


def _java_opts(flink_home: str) -> str:
    """env.java.opts.all of the distribution's own config.yaml (its Java 17 module flags)."""
    with open(os.path.join(flink_home, "conf", "config.yaml")) as handle:
        for line in handle:
            stripped = line.strip()
            if stripped.startswith("all:") and "--add-" in stripped:
                return stripped[len("all:"):].strip()
    return ""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def marker_env(tag: str) -> dict[str, str]:
    """Environment to give a process (e.g. a `beam-curator` run on Flink or Spark) so that kill_marked(tag)
    finds it and everything it starts, such as the job server JVM the Python runner launches."""
    return {MARKER: tag}


def kill_marked(tag: str, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every live process carrying marker_env(tag) (not this one); their pids."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leftovers = marked_processes(tag)
        if not leftovers:
            break
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.1)
    return sorted(set(killed))


def _is_marked(pid: int, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return f"{MARKER}={tag}".encode() in handle.read().split(b"\0")
    except OSError:
        return False


def marked_processes(tag: str) -> list[int]:
    """Live processes (not this one) whose environment has BEAM_CURATOR_ENGINES_TAG=tag (Linux /proc)."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and int(entry) != os.getpid() and _is_marked(int(entry), tag) and _pid_alive(int(entry))]


# ----------------------------------------------------------------------------------- command line


def main(argv: list[str], *, cache_dir: str, python: str | None = None) -> int:
    """fetch | start [--taskmanagers N] [--rest-port P] | stop | status. The cluster runs on in the background
    under cache_dir/cluster; `start` prints the Beam options that run a pipeline there with `python`."""
    parser = argparse.ArgumentParser(prog="flink", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="build the job servers and install Flink (idempotent)")
    start = commands.add_parser("start", help="start a standalone cluster in the background")
    start.add_argument("--taskmanagers", type=int, default=2)
    start.add_argument("--rest-port", type=int, default=0)
    commands.add_parser("stop", help="stop the background cluster")
    commands.add_parser("status", help="the background cluster's TaskManagers and Beam options")
    args = parser.parse_args(argv)
    python = python or sys.executable
    root = os.path.join(cache_dir, "cluster")
    if args.command == "fetch":
        started = time.monotonic()
        artifacts = fetch(cache_dir, python=python)
        for name, path in artifacts._asdict().items():
            print(f"{name}: {path}")
        print(f"fetch: {time.monotonic() - started:.1f} s")
        return 0
    cluster = FlinkCluster.attach(root)
    if args.command == "start":
        if cluster is not None and cluster.jobmanager_pid() is not None:
            print(f"flink: already running (REST {cluster.rest_address}); `stop` first", file=sys.stderr)
            return 1
        if cluster is not None:
            cluster.stop()
        artifacts = fetch(cache_dir, python=python)
        cluster = FlinkCluster(root, artifacts.flink_home, taskmanagers=args.taskmanagers, rest_port=args.rest_port)
        started = time.monotonic()
        cluster.start()
        cluster.save()
        print(f"flink: {args.taskmanagers} TaskManagers up in {time.monotonic() - started:.1f} s, "
              f"REST http://{cluster.rest_address}, logs {cluster.log_dir}")
        print("Beam options:", shlex.join(cluster.beam_options(artifacts.flink_job_server_jar, python)))
        return 0
    if args.command == "stop":
        if cluster is None:
            print("flink: no cluster recorded under " + root)
            return 0
        started = time.monotonic()
        cluster.stop()
        print(f"flink: stopped in {time.monotonic() - started:.1f} s")
        return 0
    # status
    if cluster is None:
        print("flink: not running")
        return 1
    try:
        registered = cluster.taskmanagers()
    except (OSError, ValueError) as error:
        print(f"flink: recorded under {root} but REST {cluster.rest_address} does not answer ({error}); "
              f"live JVMs: jobmanager {cluster.jobmanager_pid()}, taskmanagers {cluster.taskmanager_pids()}")
        return 1
    print(f"flink: REST http://{cluster.rest_address}, {len(registered)} TaskManagers registered "
          f"(pids {cluster.taskmanager_pids()}), JobManager pid {cluster.jobmanager_pid()}")
    jar = os.path.join(cache_dir, "flink-jobserver", "beam-flink-job-server.jar")
    print("Beam options:", shlex.join(cluster.beam_options(jar, python)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], cache_dir=os.path.join(os.path.dirname(HERE), ".cache", "engines")))
