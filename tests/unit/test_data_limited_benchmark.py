"""benchmarks.data_limited end to end at a toy size: both arms train through `python -m gan_core`, the
table has one row per seed with FD/floor and D's signs, and a second call reuses the runs."""

from __future__ import annotations

import re

import pytest

from benchmarks import data_limited


@pytest.mark.slow
def test_the_sweep_trains_both_arms_prints_the_paired_table_and_reuses_finished_runs(tmp_path, capsys,
                                                                                       one_thread):
    argv = ["--seeds", "3", "--steps", "20", "--subset", "100", "--jobs", "2", "--out", str(tmp_path),
            "--set", "train.tick_every_steps=10"]
    assert data_limited.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("trained ") == 2
    assert (tmp_path / "with-s3" / "checkpoints" / "checkpoint-000000020" / "state.pt").exists()
    config = (tmp_path / "with-s3" / "checkpoints" / "checkpoint-000000020" / "config.json").read_text()
    assert '"cutout"' in config and '"fill": -1.0' in config and '"subset": 100' in config
    row = re.search(r"^\| 3 \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+) / ([+-][\d.]+) \| ([+-][\d.]+) / ([+-][\d.]+) \|$",
                    out, re.M)
    assert row, out
    fd_without, fd_with, *signs = map(float, row.groups())
    assert fd_without > 0 and fd_with > 0 and fd_without != fd_with
    assert all(-1 <= s <= 1 for s in signs)
    assert "lower with augmentation on" in out and "of 1 seeds" in out
    assert data_limited.main(argv) == 0  # the runs exist: evaluated again, not retrained
    again = capsys.readouterr().out
    assert "trained " not in again and row.group(0) in again
    # the same folder under other settings: refused in one line before anything is trained
    assert data_limited.main(argv + ["--set", "train.ema_kimg=5"]) == 2
    captured = capsys.readouterr()
    assert "a finished run with another config" in captured.err and "trained " not in captured.out
    assert data_limited.main(argv + ["--augment", "augment.fill=2"]) == 2
    assert "augment.fill: got 2.0; allowed: a number in [-1, 1]" in capsys.readouterr().err
