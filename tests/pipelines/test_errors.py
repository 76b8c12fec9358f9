"""No silent outcome: every wrong invocation is one line and a non-zero exit with nothing written; a job's
error reaches the user every time, whatever the decoder's threads do; a failed run never looks finished."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_curator import cli
from tests.support.helpers import make_samples, write_tar
from tests.support.output import digests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Raw shards, a curated output of them, its exact-dedup removal list, a file, an empty directory."""
    root = tmp_path_factory.mktemp("world")
    raw = root / "raw"
    raw.mkdir()
    write_tar(str(raw / "a.tar"), make_samples(0, 4))
    write_tar(str(raw / "b.tar"), make_samples(1, 4))
    assert cli.main(["curate", str(raw), "--output", str(root / "curated"), "--no-progress", "--no-report"]) == 0
    assert cli.main(["dedup", str(root / "curated"), "--output", str(root / "removal")]) == 0
    (root / "notes.txt").write_text("not a directory")
    (root / "empty").mkdir()
    other = root / "other-list"
    other.mkdir()
    pq.write_table(pa.table({"id": ["0" * 32], "kept_id": ["1" * 32], "original_path": ["/elsewhere/x.tar#k.jpg"]}),
                   str(other / "duplicates-exact-00000.parquet"))
    return root


# (what is wrong, argv with {root} for the fixture's directory, a fragment of the one line, the output it
# must leave absent or unchanged)
WRONG = [
    ("no input", "curate --output {root}/o", "the following arguments are required: INPUT", "o"),
    ("no output", "curate {root}/raw", "the following arguments are required: --output", None),
    ("misspelled option, required one missing", "curate {root}/raw --ouput {root}/o",
     "unrecognized option --ouput (did you mean --output?)", "o"),
    ("unknown option", "curate {root}/raw --output {root}/o --frobnicate", "unrecognized option --frobnicate", "o"),
    ("missing input", "curate {root}/nowhere --output {root}/o", "no input file matches", "o"),
    ("a file that is not a shard", "curate {root}/notes.txt --output {root}/o", "--file-extensions", "o"),
    ("an empty input directory", "curate {root}/empty --output {root}/o", "no input file matches", "o"),
    ("output is a file", "curate {root}/raw --output {root}/notes.txt", "is a file", None),
    ("output holds a run", "curate {root}/raw --output {root}/curated", "--resume", "curated"),
    ("input inside the output", "curate {root}/curated --output {root}", "inside the output directory", None),
    ("negative probability", "curate {root}/raw --output {root}/o --model-dir m --nsfw-threshold -1",
     "--nsfw-threshold: takes a probability from 0 to 1", "o"),
    ("probability over 1", "curate {root}/raw --output {root}/o --model-dir m --nsfw-threshold 2",
     "a probability from 0 to 1", "o"),
    ("cosine over 1", "curate {root}/raw --output {root}/o --model-dir m --clip-score-threshold 5",
     "a cosine from -1 to 1", "o"),
    ("aesthetic over 10", "curate {root}/raw --output {root}/o --model-dir m --aesthetic-threshold 11",
     "a score from 0 to 10", "o"),
    ("fraction over 1", "curate {root}/raw --output {root}/o --max-failed-fraction 1.5", "a fraction from 0 to 1", "o"),
    ("zero images per tar", "curate {root}/raw --output {root}/o --images-per-tar 0", "a positive integer", "o"),
    ("not a number", "curate {root}/raw --output {root}/o --dali-batch-size many", "takes an integer", "o"),
    ("quality over 100", "curate {root}/raw --output {root}/o --jpeg-quality 101", "from 1 to 100", "o"),
    ("aspect ratio under 1", "curate {root}/raw --output {root}/o --max-aspect-ratio 0.5", "a ratio >= 1", "o"),
    ("unknown choice", "curate {root}/raw --output {root}/o --writer-mode sideways", "takes one of auto, fused, keyed",
     "o"),
    ("drop uncaptioned without the CLIP score", "curate {root}/raw --output {root}/o --drop-uncaptioned",
     "--drop-uncaptioned drops samples in the CLIP-score stage", "o"),
    ("embed without a model dir", "curate {root}/raw --output {root}/o --embed", "--embed needs --model-dir", "o"),
    ("unknown score", "curate {root}/raw --output {root}/o --model-dir m --scores beauty", "unknown: beauty", "o"),
    ("resume and overwrite", "curate {root}/raw --output {root}/o --resume --overwrite", "choose one", "o"),
    ("resume with random names", "curate {root}/raw --output {root}/o --resume --no-deterministic-name",
     "--resume needs --deterministic-name", "o"),
    ("missing model dir", "curate {root}/raw --output {root}/o --model-dir {root}/nowhere --embed", "nowhere", "o"),
    ("missing removal list", "curate {root}/raw --output {root}/o --remove-duplicates {root}/nowhere",
     "holds no *.parquet removal list", "o"),
    ("removal list of other data", "curate {root}/raw --output {root}/o --remove-duplicates {root}/other-list",
     "none of them is in this input", "o"),
    ("stage that cannot be imported", "curate {root}/raw --output {root}/o --stage no_such_module:x",
     "cannot import", "o"),
    ("stage without a colon", "curate {root}/raw --output {root}/o --stage just_a_name", "MODULE:NAME", "o"),
    ("dedup of raw shards", "dedup {root}/raw --output {root}/o", "holds no curated parquet", "o"),
    ("dedup of one output twice", "dedup {root}/curated {root}/curated/ --output {root}/o", "given twice", "o"),
    ("perceptual without phash", "dedup {root}/curated --method perceptual --output {root}/o",
     "has a value in the phash column", "o"),
    ("a keep policy of semantic dedup only", "dedup {root}/curated --keep hard --output {root}/o",
     "keep must be one of largest, smallest-id for exact dedup", "o"),
    ("eps of 1", "dedup {root}/curated --method semantic --eps 1 --output {root}/o", "(1 excluded)", "o"),
    ("zero clusters", "dedup {root}/curated --method semantic --n-clusters 0 --output {root}/o",
     "a positive integer", "o"),
    ("dedup into an earlier run's lists", "dedup {root}/curated --output {root}/removal", "--overwrite", "removal"),
    ("prune of raw shards", "prune {root}/raw --remove-duplicates {root}/removal --output {root}/o",
     "is not a shard of a beam_curator output", "o"),
    ("prune without a removal list", "prune {root}/curated --output {root}/o",
     "the following arguments are required: --remove-duplicates", "o"),
    ("prune into an earlier run", "prune {root}/curated --remove-duplicates {root}/removal --output {root}/curated",
     "inside the output directory", "curated"),
    ("report of no run", "report {root}/empty", "no run to report on", "empty"),
    ("report with a zero sheet", "report {root}/curated --sheet-size 0", "a positive integer", None),
    ("export without a checkpoint", "export-models --output {root}/o", "--clip HF_DIR is required", "o"),
    ("export of a missing checkpoint", "export-models --clip {root}/nowhere --output {root}/o", "nowhere", "o"),
    ("sample without a directory", "make-sample", "the following arguments are required: DIR", None),
    ("sample of no shards", "make-sample {root}/o --shards 0", "a positive integer", "o"),
    ("a Beam option to a command without Beam", "report {root}/curated --runner=FnApiRunner",
     "unrecognized option --runner", None),
]


@pytest.mark.parametrize("what, argv, fragment, output", WRONG, ids=[case[0] for case in WRONG])
def test_a_wrong_invocation_is_one_line_and_writes_nothing(world, capsys, what, argv, fragment, output):
    before = digests(str(world / output)) if output and (world / output).exists() else None
    code = cli.main(argv.format(root=world).split())
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("beam-curator")]
    assert code != 0 and len(problems) == 1, err
    assert "error:" in problems[0] and fragment in problems[0], problems[0]
    assert "Traceback" not in err
    if output:
        after = digests(str(world / output)) if (world / output).exists() else None
        assert after == before, f"{output} changed"
    assert not glob.glob(f"{world}/**/.beam_curator-temp-*", recursive=True)


def test_there_are_at_least_thirty_wrong_invocations():
    assert len(WRONG) >= 30 and {argv.split()[0] for _, argv, _, _ in WRONG} == {
        "curate", "dedup", "prune", "report", "export-models", "make-sample"}


@pytest.mark.parametrize("workers", [[], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]],
                         ids=["in-process", "two-worker-processes"])
def test_a_stage_error_reaches_the_user_every_time(world, tmp_path, workers):
    # A stage that loses an image fails the job while the decoder's threads are decoding (and, in one
    # process, redirecting fd 2 around DALI): the message must reach stderr in each of 50 runs.
    runs = 50
    command = [sys.executable, "-m", "tests.support.error_runs", str(runs), "3" if workers else "2", "--",
               "curate", str(world / "raw"), "--output", str(tmp_path / "{run}"), "--stage",
               "tests.support.stage_examples:lose_one", "--no-progress", "--no-report", "--dali-batch-size", "2",
               *workers]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    reached = [code == 1 and "beam-curator curate: error: the job failed: StageContractError: stage 'lose_one' must "
               "account for every image" in err for code, err in results]
    assert sum(reached) == runs, [err[-500:] for (code, err), ok in zip(results, reached) if not ok][:2]
    stats = json.loads((tmp_path / "0" / "_stats.json").read_text())  # the failed run says so
    assert stats["status"] == "failed" and "lose_one" in stats["reason"]
    assert not (tmp_path / "0" / "_SUCCESS").exists()


def test_a_successful_run_writes_success_last(world, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["curate", str(world / "raw"), "--output", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["status"] == "succeeded" and stats["reason"] == ""
    success = (out / "_SUCCESS").stat().st_mtime_ns
    others = [path for path in out.rglob("*") if path.is_file() and path.name != "_SUCCESS"]
    assert others and all(path.stat().st_mtime_ns <= success for path in others)


def test_damaged_shards_and_a_run_that_filtered_everything_warn(world, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    write_tar(str(source / "good.tar"), make_samples(2, 3))
    for name in ("bad1.tar", "bad2.tar", "bad3.tar"):
        (source / name).write_bytes(b"this is not a tar archive" * 40)
    assert cli.main(["curate", str(source), "--output", str(tmp_path / "o1"), "--no-progress", "--no-report"]) == 0
    assert "warning: 3 of 4 shard(s) could not be read" in capsys.readouterr().err
    assert cli.main(["curate", str(world / "raw"), "--output", str(tmp_path / "o2"), "--no-progress", "--no-report",
                     "--min-size", "5000"]) == 0
    assert "warning: no image was written: all 8 samples read filtered" in capsys.readouterr().err
