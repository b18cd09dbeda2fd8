"""Charts as SVG markup for the page, drawn by pygal on the server.

The markup carries no script and no stylesheet of its own (the Content-Security-Policy allows
neither inline): pygal's inline config script and <style> are taken out, and the same styles,
scoped to `svg.pygal-chart`, are served once by `stylesheet()`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import pygal
from pygal.style import Style

BAD, WARN, OK, TEAL, SLATE = "#c0262d", "#b25e00", "#17803d", "#128c7e", "#5b7fa6"
STYLE = Style(
    background="transparent",
    plot_background="#ffffff",
    foreground="#1d2430",
    foreground_strong="#1d2430",
    foreground_subtle="#667085",
    opacity=".85",
    opacity_hover=".95",
    colors=(BAD, WARN, TEAL, SLATE, OK),
    font_family="system-ui, sans-serif",
    label_font_size=12,
    major_label_font_size=12,
    legend_font_size=13,
    title_font_size=15,
    value_font_size=12,
)
CONFIG: dict[str, Any] = {
    "style": STYLE,
    "js": [],  # pygal's tooltips script lives on a CDN: never referenced
    "width": 720,
    "height": 320,
    "legend_at_bottom": True,
    "legend_box_size": 12,
    "margin": 12,
    "print_values": False,
    "show_minor_x_labels": True,
    "pretty_print": False,
}
# Each chart's series colours, by the class its <svg> carries.
PALETTES = {"violations": (BAD, WARN), "rates": (TEAL,), "times": (SLATE, WARN, BAD)}
INLINE = re.compile(r"<(script|style)\b[^>]*>.*?</\1>|<!--.*?-->| style=\"[^\"]*\"", re.S)


def _chart(kind: Any, palette: str, **options: Any) -> Any:
    return kind(**{**CONFIG, **options}, classes=["pygal-chart", f"palette-{palette}"])


def _svg(chart: Any) -> str:
    markup = chart.render(disable_xml_declaration=True, is_unicode=True)
    return INLINE.sub("", markup)


def _whole_ticks(top: int) -> list[int]:
    step = max(1, math.ceil(top / 8))
    return list(range(0, max(top, 1) + step, step))


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 1)


def violations_by_day(
    days: Sequence[str], breaches: Sequence[int], resolution: Sequence[int]
) -> str:
    """Stacked bars: stage SLA breaches and resolution breaches, day by day."""
    chart = _chart(
        pygal.StackedBar,
        "violations",
        title="SLA violations by day",
        x_label_rotation=-45 if len(days) > 10 else 0,
        show_minor_x_labels=len(days) <= 31,
        x_labels_major_every=max(1, len(days) // 12),
        # Whole events: whole-number ticks.
        y_labels=_whole_ticks(
            max((b + r for b, r in zip(breaches, resolution, strict=True)), default=0)
        ),
    )
    chart.x_labels = list(days)
    chart.add("Stage SLA breaches", list(breaches))
    chart.add("Resolution breaches", list(resolution))
    return _svg(chart)


def hit_rate_by_stage(stages: Sequence[str], rates: Sequence[float | None]) -> str:
    """Horizontal bars: the share of finished visits that met their SLA, per stage (%)."""
    chart = _chart(
        pygal.HorizontalBar,
        "rates",
        title="Hit rate by stage (% of finished visits that met the SLA)",
        range=(0, 100),
        show_legend=False,
        height=max(160, 60 + 34 * len(stages)),
    )
    chart.x_labels = list(stages)
    chart.add("Hit rate", [None if r is None else round(r * 100, 1) for r in rates])
    return _svg(chart)


def time_in_stage(
    stages: Sequence[str],
    p50: Sequence[float | None],
    p90: Sequence[float | None],
    p95: Sequence[float | None],
) -> str:
    """Grouped bars: p50, p90 and p95 of business time in each stage, in minutes."""
    chart = _chart(
        pygal.Bar,
        "times",
        title="Time in stage (business minutes)",
        x_label_rotation=-20 if len(stages) > 5 else 0,
    )
    chart.x_labels = list(stages)
    chart.add("p50", [_minutes(v) for v in p50])
    chart.add("p90", [_minutes(v) for v in p90])
    chart.add("p95", [_minutes(v) for v in p95])
    return _svg(chart)


@lru_cache(maxsize=1)
def stylesheet() -> str:
    """pygal's styles for STYLE's colours, scoped to the charts: served as a file."""
    chart = pygal.Bar(**CONFIG)
    for n in range(len(STYLE.colors)):
        chart.add(str(n), [1])
    markup = chart.render(disable_xml_declaration=True, is_unicode=True)
    match = re.search(r"<style[^>]*>(.*?)</style>", markup, re.S)
    assert match, "pygal rendered no styles"
    css = match.group(1).replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")
    # The tooltip (hidden by a style attribute, shown by pygal's script) has no use here.
    rules = [
        css.replace(f"#chart-{chart.uuid}", "svg.pygal-chart"),
        ".pygal-chart .tooltip{display:none}",
    ]
    for name, colors in PALETTES.items():
        for n, color in enumerate(colors):
            scope = f"svg.pygal-chart.palette-{name} .color-{n}"
            rules.append(f"{scope},{scope} a:visited{{stroke:{color};fill:{color}}}")
    return "\n".join(rules) + "\n"
