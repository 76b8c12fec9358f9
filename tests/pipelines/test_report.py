"""The run report, opened in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs
it). Outside CI the browser test is skipped when there is no chromium, unless BEAM_CURATOR_REQUIRE_CHROMIUM
is set (.ci/run sets it), so it cannot pass without running."""

from __future__ import annotations

import glob
import html.parser
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_curator import cli
from tests.support.helpers import Sample, make_samples, write_tar

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
ARTIFACTS = os.path.join(ROOT, "test-artifacts")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("BEAM_CURATOR_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (BEAM_CURATOR_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return found


class _Attributes(html.parser.HTMLParser):
    """Every element's attributes, in document order."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), []))

    def handle_data(self, data):
        if self.elements:
            self.elements[-1][2].append(data)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, exported_models):
    """A curate run with every kind of stage: duplicate removal, size and caption filters, the model
    filters, and a broken sample."""
    root = tmp_path_factory.mktemp("report")
    samples = make_samples(0, 24) + make_samples(1, 24)
    samples[5].members["jpg"] = samples[5].members["jpg"][:300]  # broken
    for sample in samples[2::7]:
        del sample.members["txt"]  # no caption: the caption filter drops it
    inputs = root / "input"
    inputs.mkdir()
    write_tar(str(inputs / "a.tar"), samples[:24])
    write_tar(str(inputs / "b.tar"), samples[24:])
    models = ["--model-dir", exported_models.model_dir]
    scored = str(root / "scored")
    assert cli.main(["curate", str(inputs), "--output", scored, *models, "--scores", "aesthetic,nsfw,clip",
                     "--no-progress", "--no-report"]) == 0
    rows = pq.read_table(glob.glob(f"{scored}/*.parquet")).to_pylist()
    aesthetic = float(np.quantile([row["aesthetic_score"] for row in rows], 0.3))
    survivors = sorted((row for row in rows if row["aesthetic_score"] >= aesthetic and min(row["width"], row["height"]) >= 52
                        and row["caption"] and len(row["caption"].split()) >= 8), key=lambda row: row["nsfw_score"])
    nsfw = float(np.median([row["nsfw_score"] for row in survivors]))  # drops about half of what is left
    # A byte copy of an image that every filter keeps: exact dedup removes the copy, the original stays.
    original = next(s for s in samples if s.key == survivors[0]["original_key"])
    write_tar(str(inputs / "c.tar"), [Sample(f"copy_of_{original.key}", dict(original.members))])
    first = str(root / "first")
    assert cli.main(["curate", str(inputs), "--output", first, "--no-progress", "--no-report"]) == 0
    assert cli.main(["dedup", first, "--output", str(root / "removal")]) == 0
    out = str(root / "out")
    options = [*models, "--remove-duplicates", str(root / "removal"), "--min-size", "52", "--min-caption-words", "8",
               "--aesthetic-threshold", repr(aesthetic), "--nsfw-threshold", repr(nsfw)]
    assert cli.main(["curate", str(inputs), "--output", out, *options, "--scores", "clip", "--no-progress"]) == 0
    last = sorted(row["clip_score"] for row in survivors if row["nsfw_score"] < nsfw)  # what reaches the CLIP filter
    return FullRun(out, str(inputs), [*options, "--phash", "--clip-score-threshold", repr(last[len(last) // 2])])


class FullRun(NamedTuple):
    out: str  # the run the report tests look at
    inputs: str
    every_stage: list[str]  # curate options that run every built-in stage, each dropping something


def test_the_report_opens_in_chromium_with_everything_in_it(full_run):
    full_run = full_run.out
    chromium = _chromium()
    page = os.path.join(full_run, "_report", "index.html")
    assert os.path.exists(page)
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=10000"]
    dom = subprocess.run([*browser, "--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _Attributes()
    parser.feed(dom.stdout)
    (body,) = [attrs for tag, attrs, _ in parser.elements if tag == "body"]
    assert body["data-errors"] == "0"  # no script error on the page
    assert int(body["data-images"]) > 20 and body["data-broken-images"] == "0"  # every image loads

    stats = json.loads(Path(os.path.join(full_run, "_stats.json")).read_text())
    counts = {attrs["data-count"]: "".join(text).strip() for _, attrs, text in parser.elements if "data-count" in attrs}
    assert counts == {name: str(stats[name]) for name in ("shards", "samples_read", "images_failed",
                                                          "images_filtered", "images_written")}
    by_stage = {attrs["data-filtered-stage"]: int("".join(text)) for _, attrs, text in parser.elements
                if "data-filtered-stage" in attrs}
    assert by_stage == stats["filtered_by_stage"]
    assert set(by_stage) == {"image_dedup_filter", "image_size_filter", "caption_filter", "aesthetic_filter",
                             "nsfw_filter"}
    assert stats["images_failed"] == 1 and stats["reconciles"]

    plots = {attrs["data-plot"] for _, attrs, _ in parser.elements if "data-plot" in attrs}
    assert {"width", "height", "aspect_ratio", "file_size", "aesthetic_score", "nsfw_score", "clip_score", "image_size_filter",
            "caption_filter"} <= plots
    sheets = {attrs["data-sheet"] for _, attrs, _ in parser.elements if "data-sheet" in attrs}
    assert {"kept", "image_dedup_filter", "aesthetic_filter-near", "nsfw_filter-near", "image_size_filter-near",
            "caption_filter"} <= sheets
    assert "aesthetic_filter-far" not in sheets  # every drop fits on the near sheet; none is shown twice
    images_in_sheet = {}
    current = None
    for tag, attrs, _ in parser.elements:
        if "data-sheet" in attrs:
            current = attrs["data-sheet"]
        elif tag == "img" and current:
            images_in_sheet[current] = images_in_sheet.get(current, 0) + 1
    assert images_in_sheet["kept"] > 0 and images_in_sheet["image_dedup_filter"] == 2  # removed, beside kept
    assert images_in_sheet["aesthetic_filter-near"] == stats["filtered_by_stage"]["aesthetic_filter"]
    assert "failures" in {attrs.get("id") for _, attrs, _ in parser.elements}

    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "report-full-page.png")
    done = subprocess.run([*browser, "--window-size=1280,7000", f"--screenshot={shot}", f"file://{page}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and os.path.getsize(shot) > 10_000


def test_report_command_rewrites_the_report_from_the_output_alone(full_run, capsys):
    full_run = full_run.out
    page = os.path.join(full_run, "_report", "index.html")
    os.remove(page)
    assert cli.main(["report", full_run]) == 0
    assert os.path.exists(page) and "report" in capsys.readouterr().out
    assert cli.main(["report", os.path.join(full_run, "nowhere")]) == 2


def test_a_stage_with_more_drops_than_a_sheet_gets_a_far_sheet_with_other_images(full_run):
    assert cli.main(["report", full_run.out, "--sheet-size", "4"]) == 0
    parser = _Attributes()
    parser.feed(Path(os.path.join(full_run.out, "_report", "index.html")).read_text())
    shown: dict[str, list[str]] = {}
    current = None
    for tag, attrs, _ in parser.elements:
        if "data-sheet" in attrs:
            current = attrs["data-sheet"]
        elif tag == "img" and current:
            shown.setdefault(current, []).append(attrs["src"])
    near, far = shown["aesthetic_filter-near"], shown["aesthetic_filter-far"]
    assert len(near) == len(far) == 4 and not set(near) & set(far)


def test_the_report_reads_a_bounded_sample_of_tars(tmp_path, monkeypatch):
    from beam_curator import storage
    from beam_curator.report import page as report

    inputs = tmp_path / "input"
    inputs.mkdir()
    for shard in range(7):
        write_tar(str(inputs / f"s{shard}.tar"), make_samples(shard, 3))
    out = str(tmp_path / "out")
    assert cli.main(["curate", str(inputs), "--output", out, "--no-progress", "--no-report"]) == 0
    opened = []
    original = storage.open_read
    monkeypatch.setattr(storage, "open_read", lambda path: opened.append(path) or original(path))
    report.write_report(out)
    tars = [path for path in opened if path.endswith(".tar")]
    assert len(glob.glob(f"{out}/*.tar")) == 7 and 0 < len(tars) <= report.SAMPLE_TARS


def test_every_built_in_stage_between_reader_and_writer_on_two_worker_processes(full_run, tmp_path):
    """Every stage curate's options add, each dropping something, on one process and on two: both
    reconcile, with the same records and the same bytes."""
    runs = {"one": [], "two": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]}
    outputs = {}
    for name, runner in runs.items():
        out = str(tmp_path / name)
        assert cli.main(["curate", full_run.inputs, "--output", out, *full_run.every_stage, "--no-progress",
                         "--no-report", *runner]) == 0
        stats = json.loads(Path(os.path.join(out, "_stats.json")).read_text())
        assert stats["reconciles"] and stats["images_failed"] == 1 and stats["samples_read"] == 49
        assert set(stats["filtered_by_stage"]) == {"image_dedup_filter", "image_size_filter", "caption_filter",
                                                   "aesthetic_filter", "nsfw_filter", "clip_score_filter"}
        assert all(count > 0 for count in stats["filtered_by_stage"].values())
        assert stats["stages"]["phash"]["in"] == stats["stages"]["phash"]["kept"] > 0
        outputs[name] = {os.path.relpath(path, out): Path(path).read_bytes()
                         for path in glob.glob(f"{out}/**/*.*", recursive=True) if not path.endswith(".json")}
    assert outputs["one"] == outputs["two"] and any(path.startswith("_filtered") for path in outputs["one"])


def test_histogram_svg_draws_each_bin_with_its_height_and_the_threshold():
    import xml.etree.ElementTree as ElementTree

    import numpy as np

    from beam_curator.report.histogram_svg import BINS, histogram_svg

    svg = histogram_svg("score", [("written", np.array([0.0, 0.0, 3.0, np.nan])), ("dropped", np.array([1.0]))], 2.0)
    root = ElementTree.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    # the bars: filled rects other than the legend's 14 px swatches
    bars = [rect for rect in root.iter(f"{ns}rect") if rect.get("fill-opacity") and rect.get("width") != "14"]
    heights = sorted(round(float(bar.get("height")), 1) for bar in bars)
    full = 260 - 26 - 34
    assert heights == [full / 2, full / 2, full]  # the bins of 1.0, 3.0 (1 each) and 0.0 (2: the top)
    texts = [text.text for text in root.iter(f"{ns}text")]
    assert "written (3)" in texts and "dropped (1)" in texts and "threshold 2" in texts
    assert next(line.get("stroke-dasharray") for line in root.iter(f"{ns}line")) == "4 3"
    assert BINS == 30
    assert "no measured values" in histogram_svg("empty", [("written", np.array([np.nan]))])
