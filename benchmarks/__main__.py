"""`python -m benchmarks` (make bench): run every benchmarks/bench_*.py in turn, each in its own process
(one process tree), then write benchmarks/RESULTS.md from the figures they recorded.

    python -m benchmarks [--only bench_staging bench_sampling] [--out benchmarks/RESULTS.md]

Each bench prints its numbers and writes them as JSON into a temporary folder ($GANPIPE_BENCH_OUT,
benchmarks.results.record); benchmarks never assert. The GPU script (benchmarks/gpu) is not run here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import OUT_ENV, gpu_name, load_results, machine, write_results


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).parent
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=names, help="run only these benches")
    p.add_argument("--out", default=str(here / "RESULTS.md"), help="where to write the results (markdown)")
    args = p.parse_args(argv)
    info = machine()  # before the benches: the load average says how quiet the machine was
    runs: dict[str, dict] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ganpipe-bench-") as folder:
        env = {**os.environ, OUT_ENV: folder}
        for name in args.only or names:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], env=env, check=False).returncode
            runs[name] = {"rc": rc, "seconds": time.perf_counter() - t0}
            print(f"== {name}: exit {rc} after {runs[name]['seconds']:.0f} s", flush=True)
        results = load_results(folder)
    command = "make bench" if not args.only else "python -m benchmarks --only " + " ".join(args.only)
    text = write_results(results, args.out, command=command, info=info, wall_s=time.perf_counter() - t_all,
                         runs=runs, gpu=gpu_name())
    print(text)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks"))
