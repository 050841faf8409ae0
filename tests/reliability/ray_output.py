"""The CLI's own stderr lines, without what Ray forwards into the same in-process test (its workers' and
actors' lines, prefixed "(Name pid=N)", and its driver-side log records)."""

from __future__ import annotations

import re

RAY_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\(\w+ pid=\d+(, ip=[\d.]+)?\)|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+[A-Z]+ ")


def own_lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip() and not RAY_LINE.match(line)]
