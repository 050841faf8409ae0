"""`python -m benchmarks` (make bench): run every benchmarks/bench_*.py in turn, each in its own process.
Benchmarks print numbers and ratios; they never assert."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    for name in names:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
