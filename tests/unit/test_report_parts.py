"""Pieces of the run report and the progress bar, without a pipeline."""

from __future__ import annotations

import io
import logging

from beam_curator.output.stats import RunStats
from beam_curator.report.histogram_svg import histogram_svg
from beam_curator.report.page import _in_pipeline_order, score_text


def test_a_dropped_score_shows_enough_digits_to_be_below_its_threshold():
    assert score_text(0.4999996, 0.5) == "0.4999996" and float(score_text(0.4999996, 0.5)) < 0.5
    assert score_text(0.5000004, 0.5) == "0.5000004"
    assert score_text(0.31234567, 0.5) == "0.31235"  # five digits when they already tell
    assert score_text(0.5, 0.5) == "0.5" and score_text(0.123456, None) == "0.12346"


def test_stage_figures_come_in_pipeline_order():
    stats = RunStats(shards=1, shards_read=1, shards_failed=0, samples_read=1, images_decoded=1, images_failed=0,
                     images_filtered=0, images_written=1, companions_failed=0, members_failed=0, tars_written=1,
                     seconds=1.0, images_per_second=1.0,
                     stages={"aaa_writer": {"in": 1, "written": 1}, "zz_filter": {"in": 1, "kept": 1},
                             "b_reader": {"samples_read": 1}, "a_filter": {"in": 1, "kept": 1}},
                     options={"stages": ["zz_filter", "a_filter"]})
    assert [name for name, _ in _in_pipeline_order(stats)] == ["b_reader", "zz_filter", "a_filter", "aaa_writer"]


def test_histogram_end_labels_are_anchored_inside_the_plot():
    import numpy as np

    svg = histogram_svg("file size", [("written", np.asarray([1.0, 268435456.0]))], threshold=5.0)
    assert 'text-anchor="start">1<' in svg and 'text-anchor="end">2.68e+08<' in svg
    assert "stroke-dasharray" in svg  # the threshold line


def test_log_lines_are_written_above_the_progress_bar():
    from tqdm import tqdm

    from beam_curator.jobs.progress import _log_lines_above

    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers)
    handler = logging.StreamHandler()  # on sys.stderr, as the CLI's
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    root.handlers[:] = [handler]
    try:
        with tqdm(total=4, file=stream) as bar, _log_lines_above(bar):
            bar.update(1)
            logging.getLogger("beam_curator.test").warning("a line above the bar")
            bar.update(1)
        assert root.handlers == [handler]  # put back
    finally:
        root.handlers[:] = saved
    written = stream.getvalue()
    # tqdm.write cleared the bar, wrote the line whole on its own, and drew the bar again after it
    assert "\nLOG a line above the bar\n" in written or written.startswith("LOG a line above the bar\n") or \
        "\rLOG a line above the bar\n" in written
    assert written.index("LOG a line above the bar") < written.rindex("2/4")
