"""`ganpipe run`'s closing summary (issue 31, item 7): ratios to the real-vs-real floor only where the floor
means something, and KID with its unit."""

from __future__ import annotations

from pipelines.flow import floor_ratio, metrics_rows, summary_lines

SUMMARY = {"model_uri": "models:/m/1", "decision": "promoted", "alias_uri": "models:/m@champion",
           "champion_version": "1", "sample_grid": "/x.png", "seconds": {"total": 1.0}}


def _lines(metrics):
    return summary_lines({**SUMMARY, "metrics": metrics})


def test_a_ratio_over_a_near_zero_floor_is_not_printed():
    """The issue's summary printed `FD / floor 696.13` for a floor of 0.039."""
    [line] = [ln for ln in _lines({"fd": 27.15, "floor/fd": 0.039}) if "FD / floor" in ln]
    assert "696" not in line and "the floor 0.039 is near zero" in line
    [line] = [ln for ln in _lines({"fd": 21.5, "floor/fd": 10.29}) if "FD / floor" in ln]
    assert line.split()[-1] == "2.09"
    assert floor_ratio(1.0, 0.0).strip().startswith("-") and floor_ratio(1.0, float("nan")).strip().startswith("-")


def test_kid_is_shown_with_its_unit():
    rows = {name: (v, f) for name, v, f in metrics_rows({"kid": 0.00123, "floor/kid": 0.0004})}
    assert rows["kid (x 10^3)"] == ("1.23", "0.4")
