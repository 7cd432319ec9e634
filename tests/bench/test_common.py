"""The results table judges each row against its target: the figure's, or the ratio's."""

from __future__ import annotations

from bench._common import table, verdict


def test_a_figure_target_and_a_ratio_target() -> None:
    assert verdict({"ours": 52.0, "target": "<= 55"}) == "✔ <= 55.00"
    assert verdict({"ours": 3.4, "target": "<= 3"}) == "✘ <= 3.00"
    assert verdict({"ours": 26_000, "raw": 60_000, "ratio": 0.43, "ratio_target": ">= 0.7"}) == "✘ ratio >= 0.7"
    assert verdict({"ours": 590_000, "raw": 600_000, "ratio": 0.98, "ratio_target": ">= 0.9"}) == "✔ ratio >= 0.9"
    assert verdict({"ours": None, "ratio": None, "ratio_target": ">= 0.9", "skipped": "no sink"}) == "✘ not measured"
    assert verdict({"ours": 1.0}) == ""


def test_the_table_shows_the_verdict_and_the_notes() -> None:
    lines = table([{"name": "append", "ours": 30_000, "raw": 60_000, "ratio": 0.5, "unit": "records/s",
                    "ratio_target": ">= 0.7", "note": "why"}])
    assert "✘ ratio >= 0.7" in lines[2] and lines[-1] == "- append: why"
