import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_curator import cli
from beam_curator.jobs import progress
from beam_curator.jobs.curate import build_stages


def test_make_sample_then_curate_reconciles(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.05)
    source, out = str(tmp_path / "sample"), str(tmp_path / "out")
    assert cli.main(["make-sample", source, "--shards", "2", "--images-per-shard", "6"]) == 0
    assert sorted(os.listdir(source)) == ["sample-000000.tar", "sample-000001.tar"]
    assert cli.main(["curate", source, "--output", out, "--images-per-tar", "4", "--dali-batch-size", "3"]) == 0
    captured = capsys.readouterr()
    summary, report, reconciliation = captured.out.strip().splitlines()[-3:]
    assert "shards: 2/2 (0 damaged)" in summary and "images read: 12" in summary and "written: 12" in summary
    assert report == f"report: {out}/_report/index.html" and os.path.exists(f"{out}/_report/index.html")
    assert reconciliation == "reconciliation: 12 read = 12 written + 0 failed + 0 filtered: ok"
    assert "progress: " in captured.err and "shards (" in captured.err and "ETA" in captured.err
    stats = json.loads(Path(f"{out}/_stats.json").read_text())
    assert stats["samples_read"] == stats["images_decoded"] == stats["images_written"] == 12
    assert stats["images_failed"] == stats["images_filtered"] == 0 and stats["reconciles"] is True
    assert stats["shards"] == stats["shards_read"] == 2 and stats["tars_written"] == 4  # 4 + 2 per shard
    assert stats["seconds"] > 0 and stats["images_per_second"] > 0
    rows = pq.read_table(sorted(glob.glob(f"{out}/*.parquet"))).to_pylist()
    assert all(row["caption"].startswith("a landscape with") for row in rows)


def test_every_stage_parameter_is_exposed(tmp_path):
    args, beam_args = cli.parse_command([
        "curate", "in1", "in2", "--output", "o", "--files-per-partition", "3", "--file-extensions", ".tar, .tgz",
        "--dali-batch-size", "7", "--num-threads", "2", "--num-gpus-per-worker", "0", "--no-reader-verbose",
        "--max-image-pixels", "1000", "--max-member-bytes", "2000",
        "--images-per-tar", "9", "--writer-verbose", "--no-deterministic-name", "--remove-image-data",
        "--jpeg-quality", "80", "--force-reencode", "--overwrite", "--write-index", "--runner=FnApiRunner", "--direct_num_workers=2",
    ])
    assert beam_args == ["--runner=FnApiRunner", "--direct_num_workers=2"]
    partitioning, reader, writer = build_stages(args)
    assert (partitioning.file_paths, partitioning.files_per_partition, partitioning.file_extensions) == (
        ["in1", "in2"], 3, [".tar", ".tgz"])
    assert (reader.dali_batch_size, reader.num_threads, reader.num_gpus_per_worker, reader.verbose) == (7, 2, 0.0, False)
    assert (reader.max_image_pixels, reader.max_member_bytes) == (1000, 2000)
    assert (writer.output_dir, writer.images_per_tar, writer.verbose, writer.deterministic_name,
            writer.remove_image_data, writer.jpeg_quality, writer.force_reencode, writer.overwrite,
            writer.write_index) == ("o", 9, True, False, True, 80, True, True, True)


def test_defaults_match_nemo_curator():
    from beam_curator.transforms import ImageReaderStage

    args, _ = cli.parse_command(["curate", "in", "--output", "o"])
    _, reader, writer = build_stages(args)
    default = ImageReaderStage()
    assert (reader.max_image_pixels, reader.max_member_bytes) == (default.max_image_pixels, default.max_member_bytes)
    assert (reader.dali_batch_size, reader.num_threads, reader.num_gpus_per_worker) == (100, 8, 0.25)
    # The one deliberate difference: the CLI logs a line per shard only at DEBUG (--reader-verbose for INFO);
    # the stage keeps NeMo Curator's verbose=True.
    assert default.verbose and not reader.verbose
    assert (writer.images_per_tar, writer.verbose, writer.deterministic_name, writer.remove_image_data) == (
        1000, False, True, False)


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["curate", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "no input file matches" in capsys.readouterr().err
    assert cli.main(["curate", str(tmp_path), "--output", "o", "--images-per-tar", "0"]) == 2


def test_python_dash_m_and_console_script(tmp_path):
    source, out = str(tmp_path / "s"), str(tmp_path / "o")
    bindir = os.path.dirname(sys.executable)
    subprocess.run([os.path.join(bindir, "beam-curator"), "make-sample", source, "--shards", "1",
                    "--images-per-shard", "3"], check=True)
    done = subprocess.run([sys.executable, "-m", "beam_curator", "curate", source, "--output", out,
                           "--num-gpus-per-worker", "0"], check=True, capture_output=True, text=True)
    assert "written: 3" in done.stdout
    assert json.loads(Path(f"{out}/_stats.json").read_text())["images_written"] == 3


def test_progress_reporter_sums_worker_files(tmp_path):
    from beam_curator.transforms.io.image_reader import _ProgressFile

    first, second = _ProgressFile(str(tmp_path)), _ProgressFile(str(tmp_path))
    first.add_images(5)
    first.add_shard()
    second.add_images(2)
    second.flush()
    reporter = progress.ProgressReporter(str(tmp_path), 4, 0.0)
    assert reporter.read() == (1, 7)


@pytest.mark.parametrize("argv", [["curate", "x"], ["make-sample"]])
def test_missing_arguments_exit_with_usage(argv, capsys):
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "error: the following arguments are required" in line and "--help" in line
