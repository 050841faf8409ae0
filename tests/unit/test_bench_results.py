"""benchmarks/results.py: the figures each bench records and the RESULTS.md written from them."""

import re

from benchmarks import results


def fake_results(tmp_path, monkeypatch):
    monkeypatch.setenv(results.OUT_ENV, str(tmp_path))
    results.record("bench_b", [results.figure("B4", "staging MB/s", 80.0, 100.0, "MB/s", 0.8, "project / baseline",
                                              ">= 0.8")],
                   sizes="1000 rows", command="python -m benchmarks.bench_b", details=["profile: writes 90%"])
    results.record("bench_a", [
        results.figure("B1", "Ray 1 worker vs plain loop", 2.0, 2.2, "kimg/s", 1.1, "baseline / project", "<= 1.05"),
        results.figure("B9-2.5", "seconds to FD/floor <= 2.5", 50.0, 100.0, "s", 0.5, "after / before")],
        sizes="600 steps", command="python -m benchmarks.bench_a")
    return results.load_results(tmp_path)


def table_rows(text):
    return {m.group(1): [c.strip() for c in m.group(0).strip("|").split("|")]
            for m in re.finditer(r"^\| (B[\w.-]+) \|.*$", text, re.M)}


def test_every_figure_is_written_with_its_ratio_and_target(tmp_path, monkeypatch):
    res = fake_results(tmp_path / "json", monkeypatch)
    out = tmp_path / "RESULTS.md"
    info = {"cpu": "Test CPU", "cores": "2", "ram": "4.0 GiB", "python": "3.11", "torch": "2.x"}
    text = results.write_results(res, out, command="make bench", info=info, wall_s=120.0,
                                 runs={"bench_a": {"rc": 0, "seconds": 60.0}, "bench_b": {"rc": 0, "seconds": 30.0},
                                       "bench_c": {"rc": 1, "seconds": 5.0}})
    assert out.read_text() == text
    rows = table_rows(text)
    assert list(rows) == ["B1", "B4", "B9-2.5"]  # ordered by figure number, whichever bench wrote it
    b1, b4, b9 = rows["B1"], rows["B4"], rows["B9-2.5"]
    assert b1[2:9] == ["2", "2.2", "kimg/s", "1.100", "baseline / project", "<= 1.05", "**no**"]
    assert b4[5:9] == ["0.800", "project / baseline", ">= 0.8", "yes"]
    assert b9[5] == "0.500" and b9[7:9] == ["", ""]  # no target: nothing to meet
    assert "bench_c wrote no figures** (exit status 1" in text  # a failed bench is not silently dropped
    assert "- profile: writes 90%" in text and "`python -m benchmarks.bench_b`" in text and "1000 rows" in text
    assert "Test CPU" in text and "- cores: 2" in text and "make bench" in text
    assert "No GPU was available" in text


def test_record_writes_nothing_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(results.OUT_ENV, raising=False)
    assert results.record("x", [], sizes="", command="") is None
    assert results.target_met(0.95, ">= 0.9") and not results.target_met(1.2, "<= 1.10")
    assert results.target_met(float("nan"), ">= 0.9") is None
