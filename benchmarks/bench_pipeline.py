"""B6 `ganpipe run` end to end on the digits preset, with its phase breakdown, at two step counts.

    python -m benchmarks.bench_pipeline [--steps 500 2000]

Each run is a fresh `ganpipe run --preset digits --set train.total_steps=N --json` in its own process
and its own empty GANPIPE_HOME (everything local: Ray started by the run, Prefect's temporary server,
MLflow on SQLite). The phases are the run's own timings (summary "seconds": service start-up, staging,
ray start-up, training, evaluation, registration, sampling); "other" is the wall-clock time outside
them (interpreter start, imports, the flow's bookkeeping and report). The training phase itself holds
a fixed part (Ray Train's worker group, MLflow's run, the first tick's warm-up); the marginal cost of
a step is (training(N2) - training(N1)) / (N2 - N1), and the fixed start-up of a run is its wall time
minus N x that. Figure B6: the fixed share of the wall time at the larger N against the smaller N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SERVICE_VARIABLES = ("RAY_ADDRESS", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "GANPIPE_CONFIG")


def run_pipeline(steps: int) -> dict:
    """One `ganpipe run` of ``steps`` steps; returns its summary's seconds plus the measured wall time."""
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as home:
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
        env["GANPIPE_HOME"] = home
        cmd = [sys.executable, "-m", "pipelines.cli", "run", "--preset", "digits", "--set",
               f"train.total_steps={steps}", "--json", "--log-file", f"{home}/run.log"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            log = open(f"{home}/run.log").read()[-3000:] if os.path.exists(f"{home}/run.log") else ""
            raise SystemExit(f"ganpipe run failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{log}")
    start = proc.stdout.find('{\n  "model_name"')  # --json: the summary, indented, after any other output
    start = start if start >= 0 else proc.stdout.index("{")
    summary, _ = json.JSONDecoder().raw_decode(proc.stdout[start:])
    seconds = {k: float(v) for k, v in summary["seconds"].items() if k != "total"}
    seconds["other"] = wall - sum(seconds.values())
    fd = summary["metrics"].get("fd"), summary["metrics"].get("floor/fd")
    return {"steps": steps, "wall": wall, "phases": seconds, "fd_over_floor": fd[0] / fd[1] if all(fd) else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, nargs=2, default=[500, 2000], metavar=("N1", "N2"),
                   help="the two step counts (default: 500 and the digits preset's 2000, i.e. make run)")
    args = p.parse_args(argv)
    from benchmarks.results import figure, record

    runs = [run_pipeline(n) for n in args.steps]
    small, large = runs
    per_step = (large["phases"]["training"] - small["phases"]["training"]) / (large["steps"] - small["steps"])
    details = [f"marginal training cost: {1e3 * per_step:.1f} ms/step (from the two runs' training phases)"]
    for r in runs:
        r["fixed"] = r["wall"] - r["steps"] * per_step
        r["fixed_share"] = r["fixed"] / r["wall"]
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        quality = f"; FD/floor {r['fd_over_floor']:.2f}" if r["fd_over_floor"] else ""
        outside = r["wall"] - r["phases"]["training"]
        quality += f"; outside the training phase {outside:.1f} s ({100 * outside / r['wall']:.0f}% of the wall time)"
        line = (f"{r['steps']} steps: {r['wall']:.1f} s wall = steps {r['steps'] * per_step:.1f} s + fixed "
                f"{r['fixed']:.1f} s ({100 * r['fixed_share']:.0f}% fixed); phases (s): {phases}{quality}")
        print(line, flush=True)
        details.append(line)
    record("bench_pipeline", [
        figure("B6", f"ganpipe run digits: fixed start-up share of the wall time, {large['steps']} vs "
                     f"{small['steps']} steps", large["fixed_share"], small["fixed_share"], "share of wall",
               large["fixed_share"] / small["fixed_share"], f"{large['steps']} / {small['steps']} steps"),
        figure("B6-wall", f"ganpipe run digits wall time, {large['steps']} vs {small['steps']} steps", large["wall"],
               small["wall"], "s", large["wall"] / small["wall"], f"{large['steps']} / {small['steps']} steps"),
    ], sizes=f"digits preset at {small['steps']} and {large['steps']} steps, defaults otherwise (1 worker), a fresh "
             "GANPIPE_HOME each", command="python -m benchmarks.bench_pipeline", details=details)
    return 0


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.bench_pipeline"))
