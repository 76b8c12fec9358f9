"""The run report: `DIR/_report/index.html`, one self-contained page (inline SVG plots, inline JPEG
thumbnails, no network) of what a curate run did.

It reads only the output: `_stats.json`, the parquet's size and score columns, the records in
`_filtered/` (which carry thumbnails of the dropped images) and `_failures/`, and, for the sheet of
kept images, a fixed-size sample of members from at most SAMPLE_TARS tars. Its cost is bounded
whatever the size of the output, but for the column aggregates, which read a few numbers per image.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import tarfile
from collections import Counter
from typing import Any

import numpy as np

from beam_curator import storage
from beam_curator.formats.thumbnails import thumbnail_from_bytes
from beam_curator.output.layout import DEDUP_SUMMARY_FILE, FAILURES_DIR, FILTERED_DIR, REPORT_DIR, STATS_FILE
from beam_curator.output.stats import RunStats
from beam_curator.report.histogram_svg import histogram_svg

__all__ = ["REPORT_DIR", "write_report"]

_LOG = logging.getLogger(__name__)
SHEET_SIZE = 48
SAMPLE_TARS = 4
FAILURES_SHOWN = 200
DEDUP_STAGE = "image_dedup_filter"
# The parquet column a filter stage's scores live in, where it keeps them there too.
_STAGE_COLUMNS = {"aesthetic_filter": "aesthetic_score", "nsfw_filter": "nsfw_score", "clip_score_filter": "clip_score"}
_SIZE_COLUMNS = ["width", "height", "file_size", "aesthetic_score", "nsfw_score", "clip_score"]


def _read_parquet(pattern: str, columns: list[str] | None = None) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in storage.match_files(pattern):
        with storage.open_read(path) as handle:
            table = pq.read_table(handle, columns=columns)
            rows += table.to_pylist()
    return rows


def _columns(output: str) -> dict[str, np.ndarray]:
    """The written images' sizes and scores, as float arrays (NaN where missing)."""
    import pyarrow.parquet as pq

    values: dict[str, list] = {name: [] for name in _SIZE_COLUMNS}
    for path in storage.match_files(storage.join(output, "*.parquet")):
        with storage.open_read(path) as handle:
            parquet = pq.ParquetFile(handle)
            present = [name for name in _SIZE_COLUMNS if name in parquet.schema_arrow.names]  # older outputs lack some
            table = parquet.read(columns=present)
        for name in _SIZE_COLUMNS:
            column = table.column(name).to_pylist() if name in present else [None] * table.num_rows
            values[name] += [np.nan if value is None else float(value) for value in column]
    return {name: np.asarray(column, dtype=np.float64) for name, column in values.items()}


_THRESHOLD_OPTIONS = {"aesthetic_score": "aesthetic_threshold", "nsfw_score": "nsfw_threshold",
                      "clip_score": "clip_score_threshold"}


def _plots(columns: dict[str, np.ndarray], filtered: list[dict], options: dict) -> list[dict]:
    width, height = columns["width"], columns["height"]
    with np.errstate(invalid="ignore", divide="ignore"):
        aspect = np.maximum(width, height) / np.minimum(width, height)
    plots = [{"name": "width", "title": "width (px)", "svg": histogram_svg("width (px)", [("written", width)])},
             {"name": "height", "title": "height (px)", "svg": histogram_svg("height (px)", [("written", height)])},
             {"name": "aspect_ratio", "title": "aspect ratio (long / short side)",
              "svg": histogram_svg("aspect ratio", [("written", aspect)])},
             {"name": "file_size", "title": "file size (KB)", "svg": histogram_svg("file size (KB)",
                                                                          [("written", columns["file_size"] / 1024)])}]
    stages = sorted({row["stage"] for row in filtered if row["score"] is not None})
    for column in ("aesthetic_score", "nsfw_score", "clip_score"):
        stage = next((s for s, c in _STAGE_COLUMNS.items() if c == column and s in stages), None)
        if not np.isfinite(columns[column]).any() and stage is None:
            continue
        series = [("written", columns[column])]
        threshold = options.get(_THRESHOLD_OPTIONS[column])  # the run's, drawn even when nothing was dropped
        if stage is not None:
            rows = [row for row in filtered if row["stage"] == stage]
            series.append((f"dropped by {stage}", np.asarray([row["score"] for row in rows], dtype=np.float64)))
            threshold = next((row["threshold"] for row in rows if row["threshold"] is not None), threshold)
        plots.append({"name": column, "title": column, "svg": histogram_svg(column, series, threshold)})
    for stage in sorted({row["stage"] for row in filtered} - set(_STAGE_COLUMNS) - {DEDUP_STAGE}):
        # the other filters: what each dropped, on its own measure (none for a sample without a caption)
        rows = [row for row in filtered if row["stage"] == stage]
        thresholds = sorted({row["threshold"] for row in rows if row["threshold"] is not None})
        plots.append({"name": stage, "title": f"{stage}: the measure it dropped on",
                      "svg": histogram_svg(stage, [("dropped", np.asarray([np.nan if row["score"] is None else row["score"]
                                                                    for row in rows], dtype=np.float64))],
                                  thresholds[0] if len(thresholds) == 1 else None)})
    return plots


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    return handle.read() if handle is not None else b""


def _image(data: bytes, label: str, title: str) -> dict:
    return {"data": base64.b64encode(data).decode(), "label": label, "title": title}


def _kept_sheet(output: str, sheet_size: int, seed: int) -> list[dict]:
    """Thumbnails of a random sample of written images, read from at most SAMPLE_TARS tars."""
    tars = storage.match_files(storage.join(output, "*.tar"))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(tars, min(SAMPLE_TARS, len(tars))))
    images = []
    for path in chosen:
        rows = _read_parquet(path[: -len(".tar")] + ".parquet", ["member_name", "image_id", "original_key"])
        wanted = {row["member_name"]: row for row in rng.sample(rows, min(len(rows), sheet_size // max(1, len(chosen))))}
        with storage.open_read(path) as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
            for member in archive:
                row = wanted.pop(member.name, None)
                if row is not None:
                    thumbnail = thumbnail_from_bytes(_member_bytes(archive, member))
                    if thumbnail:
                        images.append(_image(thumbnail, row["original_key"], row["image_id"]))
                if not wanted:
                    break
    return images


def _thumbnails_of_written(output: str, image_ids: set[str]) -> dict[str, bytes]:
    """image_id -> thumbnail, for written images, read from the tars that hold them."""
    where: dict[str, dict[str, str]] = {}  # tar -> member -> image_id
    for row in _read_parquet(storage.join(output, "*.parquet"), ["image_id", "tar_file", "member_name"]):
        if row["image_id"] in image_ids:
            where.setdefault(row["tar_file"], {})[row["member_name"]] = row["image_id"]
    thumbnails = {}
    for tar, members in sorted(where.items()):
        with storage.open_read(storage.join(output, tar)) as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
            for member in archive:
                image_id = members.pop(member.name, None)
                if image_id is not None:
                    thumbnails[image_id] = thumbnail_from_bytes(_member_bytes(archive, member))
                if not members:
                    break
    return {image_id: data for image_id, data in thumbnails.items() if data}


def _keep_policy(removal_dir: str | None) -> str | None:
    """The policy that chose which copies stayed (the dedup run's `keep`), from its `_dedup.json`."""
    if not removal_dir:
        return None
    try:
        with storage.open_read(storage.join(removal_dir, DEDUP_SUMMARY_FILE)) as handle:
            return json.loads(handle.read()).get("keep")
    except Exception:  # an older list, or one written by hand: the sheet goes without it
        return None


_POLICIES = {"largest": "the copy with the most pixels (then the larger file, then the smaller id) stays",
             "smallest-id": "the copy with the smallest id stays",
             "hard": "the copy farthest from its cluster's centroid stays", "easy": "the copy nearest it stays",
             "random": "a random copy stays"}


def _duplicate_sheet(output: str, rows: list[dict], removal_dir: str | None, sheet_size: int) -> dict:
    """Each removed duplicate beside the image kept in its place (its record's kept_id)."""
    rows = [row for row in rows if row["thumbnail"]][: sheet_size // 2]
    kept_of: dict[str, str] = {row["image_id"]: row["kept_id"] for row in rows if row.get("kept_id")}
    kept = _thumbnails_of_written(output, set(kept_of.values())) if kept_of else {}
    images = []
    for row in rows:
        images.append(_image(row["thumbnail"], "removed", f"{row['image_id']}: {row['reason']}"))
        kept_id = kept_of.get(row["image_id"])
        if kept_id in kept:
            images.append(_image(kept[kept_id], "kept", f"{kept_id}, which {row['image_id']} duplicates"))
    policy = _keep_policy(removal_dir)
    kept_by = f" (kept by policy {policy}: {_POLICIES.get(policy, policy)})" if policy else ""
    return {"name": DEDUP_STAGE, "title": f"{DEDUP_STAGE}: removed duplicates, each beside the image kept in its "
                                          f"place{kept_by}", "images": images}


def score_text(score: float, threshold: float | None) -> str:
    """A score with as many digits as it takes to differ from its threshold (0.49999 against 0.5 is
    not "0.5"), at least 5 significant ones."""
    for digits in range(5, 17):
        text = f"{score:.{digits}g}"
        if threshold is None or score == threshold or (float(text) != threshold and (
                (float(text) < threshold) == (score < threshold))):
            return text
    return repr(score)


def _record_sheet(rows: list[dict], title: str, name: str) -> dict:
    images = [_image(row["thumbnail"], score_text(row["score"], row["threshold"]) if row["score"] is not None
                     else row["key"], f"{row['image_id']}: {row['reason']}") for row in rows if row["thumbnail"]]
    return {"name": name, "title": title, "images": images}


def _filter_sheets(output: str, filtered: list[dict], sheet_size: int, removal_dir: str | None) -> list[dict]:
    sheets = []
    for stage in sorted({row["stage"] for row in filtered}):
        rows = [row for row in filtered if row["stage"] == stage]
        if stage == DEDUP_STAGE:
            sheets.append(_duplicate_sheet(output, rows, removal_dir, sheet_size))
            continue
        scored = sorted((row for row in rows if row["score"] is not None), key=lambda row: row["score"])
        if not scored:
            sheets.append(_record_sheet(rows[:sheet_size], f"{stage}: dropped", stage))
            continue
        threshold = scored[0]["threshold"]
        # "Just below the bar" is the scores nearest the threshold: the highest when the filter keeps
        # high scores, the lowest when it keeps low ones (nsfw, max_* limits).
        near = scored[::-1] if threshold is None or scored[-1]["score"] <= threshold else scored
        shown = near[:sheet_size]
        far = [row for row in near[::-1] if row not in shown][:sheet_size]  # no image on both sheets
        sheets.append(_record_sheet(shown, f"{stage}: dropped, nearest the threshold", f"{stage}-near"))
        if far:
            sheets.append(_record_sheet(far, f"{stage}: dropped, farthest from the threshold", f"{stage}-far"))
    return sheets


def _in_pipeline_order(stats: RunStats) -> list[tuple[str, dict]]:
    """The stages' figures in the order they ran: the reader, the curation stages as the run lists
    them, the writer last (any other in name order before it)."""
    listed = list((stats.options or {}).get("stages") or [])
    readers = [name for name, figures in stats.stages.items() if "samples_read" in figures]
    writers = [name for name, figures in stats.stages.items() if "written" in figures]
    order = readers + [name for name in listed if name in stats.stages]
    order += sorted(name for name in stats.stages if name not in order and name not in writers) + writers
    return [(name, stats.stages[name]) for name in dict.fromkeys(order)]


def write_report(output: str, *, sheet_size: int = SHEET_SIZE, seed: int = 0) -> str:
    """Write `{output}/_report/index.html` from the output alone; its path."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    try:
        with storage.open_read(storage.join(output, STATS_FILE)) as handle:
            stats = RunStats.from_json(handle.read().decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"{output} has no run to report on (no {STATS_FILE}): give a directory curate or "
                                "prune wrote") from None
    filtered = _read_parquet(storage.join(output, FILTERED_DIR, "*.parquet"))
    failures = _read_parquet(storage.join(output, FAILURES_DIR, "*.parquet"))
    sample_failures = [row for row in failures if row["scope"] == "sample"]
    stats_dict: dict[str, Any] = json.loads(stats.to_json())
    environment = Environment(loader=PackageLoader("beam_curator.report", "templates"), autoescape=select_autoescape())
    page = environment.get_template("report.html").render(
        output=output,
        stats=stats_dict,
        started=stats_dict.get("started") or "?",
        finished=stats_dict.get("finished") or "?",
        reconciliation=stats.reconciliation(),
        resumed=stats.resumed_line(),
        failed_by_class=sorted(Counter(row["error_class"] for row in sample_failures).items()),
        filtered_by_stage=sorted(stats.filtered_by_stage.items()),
        dedup_stage=DEDUP_STAGE,
        plots=_plots(_columns(output), filtered, stats.options or {}),
        sheets=[{"name": "kept", "title": f"kept: a random sample of up to {sheet_size} images, from at most " f"{SAMPLE_TARS} tars", "images": _kept_sheet(output, sheet_size, seed)}, *_filter_sheets(output, filtered, sheet_size, (stats.options or {}).get("remove_duplicates"))],
        failures=failures[:FAILURES_SHOWN],
        failures_left_out=max(0, len(failures) - FAILURES_SHOWN),
        stage_rows=[(stage, {"seconds": figures.get("seconds"), "batches": figures.get("batches"),
                             "counts": ", ".join(f"{k} {v}" for k, v in figures.items() if k not in ("seconds", "batches"))})
                    for stage, figures in _in_pipeline_order(stats)],
        options=sorted((name, json.dumps(value)) for name, value in (stats_dict.get("options") or {}).items()),
    )
    path = storage.join(output, REPORT_DIR, "index.html")
    storage.write_atomically(path, page.encode())
    _LOG.info("wrote the run report %s", path)
    return path
