"""The command line a newcomer meets: typos caught before anything starts, quiet logs, a progress bar,
leftovers of crashed runs cleaned up safely, the .json companion as metadata, one output format."""

import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_curator import cli
from beam_curator.formats.decoding import decode_with_pillow
from beam_curator.jobs import progress
from beam_curator.jobs.beam_options import BEAM_OPTIONS
from beam_curator.output import leftovers
from tests.support.decoder_fuzz import base_images, make_case
from tests.support.helpers import Sample, encode, make_image, make_samples, write_tar


def _run_cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "beam_curator", *argv], capture_output=True, text=True,
                          timeout=timeout)


# --- typos -----------------------------------------------------------------------------------------

def test_a_mistyped_option_stops_before_anything_is_built(tmp_path):
    out = tmp_path / "out"
    script = ("import sys\nfrom beam_curator import cli\n"
              "code = cli.main(sys.argv[1:])\n"
              "heavy = [m for m in ('apache_beam', 'nvidia.dali') if m in sys.modules]\n"
              "print('heavy', heavy)\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script, "curate", str(tmp_path), "--output", str(out),
                           "--image-per-tar", "10"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unrecognized option --image-per-tar (did you mean --images-per-tar?)" in done.stderr
    assert "heavy []" in done.stdout  # neither Beam nor DALI was imported
    assert not out.exists()


def test_beam_options_pass_and_near_misses_are_named():
    fine = ["--runner", "FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing",
            "--project=p", "--region", "us-central1", "--sdk_container_image=img", "--no_use_public_ips",
            "--execution_mode_for_batch=PIPELINED", "--checkpointing_interval", "1000"]  # the job server's
    assert cli._unknown_options(fine, "curate") == []
    assert cli._unknown_options(["--direct_num_worker=2", "--images_per_tar=5", "--frobnicate",
                                 "--execution_mode_for_bach=BATCH"], "curate") == [
        "unrecognized option --direct_num_worker (did you mean --direct_num_workers?)",
        "unrecognized option --images_per_tar (did you mean --images-per-tar?)",
        "unrecognized option --frobnicate",
        "unrecognized option --execution_mode_for_bach (did you mean --execution_mode_for_batch?)",
    ]


def test_the_list_of_beam_options_matches_the_installed_beam():
    from apache_beam.options.pipeline_options import PipelineOptions

    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    installed = {option[2:] for action in parsers[0]._actions for option in action.option_strings
                 if option.startswith("--")}
    assert installed == set(BEAM_OPTIONS), (
        "Beam's options changed: update beam_curator/jobs/beam_options.py to\n" + repr(sorted(installed)))


def test_version_and_defaults_in_help():
    from beam_curator import __version__

    assert _run_cli("--version").stdout.strip() == f"beam-curator {__version__}"
    text = " ".join(_run_cli("curate", "--help").stdout.split())
    assert "--images-per-tar N" in text and "(default: 1000)" in text and "(default: auto)" in text


# --- quiet logs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("runner_options", [[], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]],
                         ids=["in-process", "two-worker-processes"])
def test_a_clean_run_is_quiet(tmp_path, runner_options):
    source, out = tmp_path / "in", tmp_path / "out"
    assert cli.main(["make-sample", str(source)]) == 0
    done = _run_cli("curate", str(source), "--output", str(out), *runner_options)  # stderr: a pipe
    assert done.returncode == 0, done.stderr
    everything = done.stdout + done.stderr
    assert "\x1b[" not in everything and "apitools" not in everything and "sdk_worker" not in everything
    assert len(everything.strip().splitlines()) <= 15, everything
    assert done.stdout.strip().splitlines()[-1] == "reconciliation: 120 read = 120 written + 0 failed + 0 filtered: ok"


@pytest.mark.parametrize("runner_options", [[], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]],
                         ids=["in-process", "two-worker-processes"])
def test_an_undecodable_image_is_named_once(tmp_path, runner_options):
    source = tmp_path / "in"
    source.mkdir()
    kind, corrupt_png = make_case(0, 24, base_images())  # sound headers, random IDAT data: DALI fails it
    assert kind == "png/idat_random"
    samples = [*make_samples(0, 4), Sample("broken", {"jpg": b"\xff\xd8\xff\xe0" + bytes(300), "txt": b"x"}), Sample("corrupt", {"png": corrupt_png})]
    write_tar(str(source / "a.tar"), samples)
    done = _run_cli("curate", str(source), "--output", str(tmp_path / "out"), *runner_options)
    assert done.returncode == 0
    everything = done.stdout + done.stderr
    assert everything.count("broken.jpg") == 1 and everything.count("corrupt.png") == 1
    # what the native libraries print (libpng's errors here) goes to the debug log, not to stderr
    assert "\x1b[" not in everything and "libpng" not in everything


# --- progress --------------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_and_lines_elsewhere(tmp_path):
    from beam_curator.transforms.io.image_reader import _ProgressFile

    totals = _ProgressFile(str(tmp_path))
    totals.add_images(30)
    totals.add_shard()
    terminal = _Terminal()
    reporter = progress.ProgressReporter(str(tmp_path), 4, time.monotonic() - 10, stream=terminal)
    reporter.start()
    time.sleep(1.5)
    reporter.stop()
    shown = terminal.getvalue()
    assert "1/4" in shown and "25%" in shown and "30 images" in shown and "images/s" in shown
    line = progress.ProgressReporter(str(tmp_path), 4, time.monotonic() - 10).line(1, 30)
    assert line.startswith("progress: 1/4 shards (25%), 30 images, 3.0 images/s, ETA 0:00:30")


# --- leftovers of crashed runs ---------------------------------------------------------------------

def test_a_killed_run_leaves_a_folder_the_next_run_removes(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    assert cli.main(["make-sample", str(source), "--shards", "2", "--images-per-shard", "10"]) == 0
    job = subprocess.Popen([sys.executable, "-m", "beam_curator", "curate", str(source), "--output", str(out),
                            "--num-threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not glob.glob(f"{out}/.beam_curator-temp-*/_owner.json") and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)  # as a crash, a preempted VM or an OOM kill would
    job.wait()
    (left,) = glob.glob(f"{out}/.beam_curator-temp-*")
    (judged,) = leftovers.find_leftovers(str(out))
    assert judged.removable and judged.path == left
    done = _run_cli("curate", str(source), "--output", str(out), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert f"removed {left}, left by an earlier run that did not finish" in done.stderr
    assert not glob.glob(f"{out}/.beam_curator-temp-*")


def test_a_folder_another_job_may_own_is_kept_and_reported(tmp_path):
    out = tmp_path / "out"
    remote = out / ".beam_curator-temp-remote"
    remote.mkdir(parents=True)
    leftovers.write_owner(str(remote), runner="DataflowRunner", local=False)
    alive = out / ".beam_curator-temp-alive"
    alive.mkdir()
    leftovers.write_owner(str(alive), runner="FnApiRunner", local=True)  # this very process: alive
    unknown = out / ".beam_curator-temp-unknown"
    (unknown / "attempt").mkdir(parents=True)
    found = {os.path.basename(item.path): item for item in leftovers.find_leftovers(str(out))}
    assert not any(item.removable for item in found.values())
    assert "DataflowRunner" in found[".beam_curator-temp-remote"].why
    assert "still running" in found[".beam_curator-temp-alive"].why
    assert "no owner record" in found[".beam_curator-temp-unknown"].why


def test_progress_folders_of_dead_runs_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"beam_curator-progress-{dead.pid}-abc").mkdir()
    mine = leftovers.make_progress_dir()
    assert leftovers.remove_stale_progress_dirs() == 1
    assert os.listdir(tmp_path) == [os.path.basename(mine)]


# --- metadata and one output format ----------------------------------------------------------------

def test_json_companion_objects_become_metadata(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    img2dataset = {"url": "https://example.com/a.jpg", "caption": "a cat", "width": 64, "height": 48,
                   "original_width": 640, "sha256": "ab" * 32, "status": "success", "error_message": None}
    samples = [
        Sample("obj", {"jpg": encode(make_image(1)), "json": json.dumps(img2dataset).encode()}),
        Sample("list", {"jpg": encode(make_image(2)), "json": b"[1, 2]"}),
        Sample("none", {"jpg": encode(make_image(3))}),
    ]
    write_tar(str(source / "a.tar"), samples)
    assert cli.main(["curate", str(source), "--output", str(out), "--no-progress"]) == 0
    rows = {row["key"]: row for row in pq.read_table(glob.glob(f"{out}/*.parquet")).to_pylist()}
    assert json.loads(rows["obj"]["metadata"]) == img2dataset
    assert rows["list"]["metadata"] == rows["none"]["metadata"] == "{}"


def test_output_format_jpg_gives_every_sample_the_same_members(tmp_path):
    import tarfile

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    pixels = make_image(5, 40, 30)
    jpeg = encode(make_image(6))
    samples = [Sample("a", {"png": encode(pixels, "PNG"), "txt": b"a"}), Sample("b", {"jpeg": jpeg, "txt": b"b"}),
               Sample("c", {"webp": encode(pixels, "WEBP", lossless=True), "txt": b"c"})]
    write_tar(str(source / "mixed.tar"), samples)
    assert cli.main(["curate", str(source), "--output", str(out), "--no-progress", "--output-format", "jpg"]) == 0
    (tar,) = glob.glob(f"{out}/*.tar")
    with tarfile.open(tar) as archive:
        members = {member.name: archive.extractfile(member).read() for member in archive}
    assert sorted(members) == ["a.jpg", "a.txt", "b.jpg", "b.txt", "c.jpg", "c.txt"]
    assert members["b.jpg"] == jpeg  # already JPEG: the bytes pass through
    for key in "ac":
        assert members[f"{key}.jpg"][:3] == b"\xff\xd8\xff"
        assert np.abs(decode_with_pillow(members[f"{key}.jpg"]).astype(int) - pixels).mean() < 8  # q95, 4:2:0
    rows = pq.read_table(tar[:-4] + ".parquet").to_pylist()
    assert [row["image_format"] for row in rows] == ["jpg", "jpg", "jpg"]


@pytest.mark.parametrize("value", ["png", "JPG", ""])
def test_output_format_is_validated(value):
    from beam_curator.transforms import ImageWriterStage

    with pytest.raises(ValueError, match="output_format"):
        ImageWriterStage("out", output_format=value)


def test_max_failed_fraction_stops_a_run_that_fails_too_much(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    bad = [Sample(f"bad{i}", {"jpg": b"\xff\xd8\xff\xe0" + bytes(100)}) for i in range(3)]
    write_tar(str(source / "a.tar"), make_samples(0, 3) + bad)  # half of the samples fail
    done = _run_cli("curate", str(source), "--output", str(tmp_path / "out"), "--max-failed-fraction", "0.2")
    assert done.returncode == 4
    assert ("beam-curator curate: error: 3 of 6 samples failed (50.0%), over --max-failed-fraction 0.2; the failure "
            "records in _failures/ say why\n") in done.stderr
    # A failed run never looks finished: no _SUCCESS; _stats.json and the report say why.
    out = tmp_path / "out"
    stats = json.loads((out / "_stats.json").read_text())
    assert (stats["status"], stats["images_failed"]) == ("failed", 3) and "--max-failed-fraction 0.2" in stats["reason"]
    assert not (out / "_SUCCESS").exists() and 'data-status="failed"' in (out / "_report" / "index.html").read_text()
    assert cli.main(["curate", str(source), "--output", str(tmp_path / "ok"), "--no-progress",
                     "--max-failed-fraction", "0.5"]) == 0
    assert json.loads((tmp_path / "ok" / "_stats.json").read_text())["status"] == "succeeded"
    assert (tmp_path / "ok" / "_SUCCESS").exists()
