"""Histograms as small inline SVG, drawn by hand: the run report's plots without a plotting library
(matplotlib cost every curate run a second to import and draw)."""

from __future__ import annotations

from html import escape

import numpy as np

__all__ = ["histogram_svg"]

WIDTH, HEIGHT = 420, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 12, 26, 34  # margins around the plot area (room for 8-digit counts)
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
BINS = 30


def _labels(values: list[float]) -> list[str]:
    """The tick values, with as few significant digits (3 or more) as tell them apart."""
    for digits in range(3, 12):
        labels = [f"{value:.{digits}g}" for value in values]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def histogram_svg(title: str, series: list[tuple[str, np.ndarray]], threshold: float | None = None) -> str:
    """An `<svg>` element: overlaid histograms of each (label, values) on shared bins (non-finite
    values left out), a dashed line at threshold, a legend with each series' count."""
    present = [(label, values[np.isfinite(values)]) for label, values in series]
    present = [(label, values) for label, values in present if len(values)]
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="10">',
             f'<text x="{WIDTH / 2}" y="15" text-anchor="middle" font-size="12">{escape(title)}</text>',
             f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>']
    if not present:
        parts.append(f'<text x="{_LEFT + plot_w / 2}" y="{_TOP + plot_h / 2}" text-anchor="middle">'
                     "no measured values</text>")
    else:
        low = min(float(values.min()) for _, values in present)
        high = max(float(values.max()) for _, values in present)
        if threshold is not None:
            low, high = min(low, threshold), max(high, threshold)
        high = high if high > low else low + 1
        edges = np.linspace(low, high, BINS + 1)
        counts = [np.histogram(values, bins=edges)[0] for _, values in present]
        top = max(int(count.max()) for count in counts) or 1
        bar_w = plot_w / BINS
        for index, count in enumerate(counts):
            color = _COLORS[index % len(_COLORS)]
            for position, value in enumerate(count):
                if value:
                    bar_h = plot_h * value / top
                    parts.append(f'<rect x="{_LEFT + position * bar_w:.1f}" y="{_TOP + plot_h - bar_h:.1f}" '
                                 f'width="{bar_w:.1f}" height="{bar_h:.1f}" fill="{color}" fill-opacity="0.65"/>')
        fractions = (0.0, 0.5, 1.0)  # x ticks: low, middle, high; the ends anchored inside, never clipped
        anchors = ("start", "middle", "end")
        for fraction, anchor, label in zip(fractions, anchors,
                                           _labels([low + (high - low) * fraction for fraction in fractions])):
            parts.append(f'<text x="{_LEFT + plot_w * fraction:.1f}" y="{_TOP + plot_h + 14}" '
                         f'text-anchor="{anchor}">{label}</text>')
        parts.append(f'<text x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end">{top}</text>'
                     f'<text x="{_LEFT - 4}" y="{_TOP + plot_h}" text-anchor="end">0</text>')
        legend = [(f"{label} ({len(values)})", _COLORS[index % len(_COLORS)], False)
                  for index, (label, values) in enumerate(present)]
        if threshold is not None:
            x = _LEFT + plot_w * (threshold - low) / (high - low)
            parts.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_TOP + plot_h}" stroke="black" '
                         'stroke-dasharray="4 3"/>')
            legend.append((f"threshold {threshold:g}", "black", True))
        for index, (text, color, dashed) in enumerate(legend):
            y = _TOP + 12 + 13 * index
            x = WIDTH - _RIGHT - 150
            mark = (f'<line x1="{x}" y1="{y - 3}" x2="{x + 14}" y2="{y - 3}" stroke="{color}" stroke-dasharray="4 3"/>'
                    if dashed else f'<rect x="{x}" y="{y - 8}" width="14" height="8" fill="{color}" fill-opacity="0.65"/>')
            parts.append(f'{mark}<text x="{x + 18}" y="{y}">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)
