"""Benchmark figures as JSON, and benchmarks/RESULTS.md written from them.

Each ``bench_*.py`` prints its numbers and, through `record`, writes them to
``$GANPIPE_BENCH_OUT/<bench>.json`` when that variable is set (``python -m benchmarks`` sets it). A
figure is the project's number, the baseline measured in the same run, their ratio and what the
ratio means (``ratio_def``), with an optional target (``"<= 1.10"``, ``">= 0.9"``); ``details``
are free lines (the profile, sizes). `write_results` turns the collected JSONs into RESULTS.md.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

OUT_ENV = "GANPIPE_BENCH_OUT"


def figure(fid: str, name: str, project: float, baseline: float, unit: str, ratio: float, ratio_def: str,
           target: str | None = None) -> dict[str, Any]:
    """One figure: ``project`` and ``baseline`` in ``unit``; ``ratio`` as ``ratio_def`` says (e.g.
    "project / baseline"); ``target`` a comparison such as ">= 0.9" on the ratio, or None."""
    return {"id": fid, "name": name, "project": project, "baseline": baseline, "unit": unit, "ratio": ratio,
            "ratio_def": ratio_def, "target": target}


def record(bench: str, figures: list[dict[str, Any]], *, sizes: str, command: str,
           details: list[str] | None = None) -> Path | None:
    """Write ``{bench, figures, sizes, command, details}`` to $GANPIPE_BENCH_OUT/<bench>.json (nothing
    when the variable is unset). Returns the path written, or None."""
    out = os.environ.get(OUT_ENV)
    if not out:
        return None
    path = Path(out) / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bench": bench, "figures": figures, "sizes": sizes, "command": command,
                                "details": details or []}, indent=2))
    return path


def target_met(ratio: float, target: str | None) -> bool | None:
    """Whether ``ratio`` meets ``target`` (">= x", "<= x", "> x", "< x"); None without a target or ratio."""
    if not target or ratio is None or ratio != ratio:
        return None
    op, value = target.split()
    value = float(value)
    return {">=": ratio >= value, "<=": ratio <= value, ">": ratio > value, "<": ratio < value}[op]


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, load, Python and the main packages' versions, GPU presence."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        ram = "unknown"
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "ram": ram, "os": platform.platform(),
            "python": platform.python_version()}
    for pkg in ("torch", "ray", "prefect", "mlflow", "pyarrow", "numpy"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = "not installed"
    try:
        info["load average"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    return info


def gpu_name() -> str | None:
    """The first CUDA device's name, or None (asked in a subprocess: this process never imports torch)."""
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip() or None


def _num(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, (int, float)):
        a = abs(v)
        return f"{v:,.0f}" if a >= 1000 else f"{v:.3g}" if a >= 1 else f"{v:.3f}"
    return str(v)


def _ratio(v: Any) -> str:
    return _num(v) if v is None or v != v else f"{v:.3f}"


def _figure_order(f: dict[str, Any]) -> tuple[int, str]:
    m = re.match(r"B(\d+)", f["id"])
    return (int(m.group(1)) if m else 10**6, f["id"])


def write_results(results: list[dict[str, Any]], path: str | Path, *, command: str, info: dict[str, str],
                  wall_s: float | None = None, runs: dict[str, dict[str, Any]] | None = None,
                  gpu: str | None = None) -> str:
    """RESULTS.md from the benches' JSONs (``results``, as `record` wrote them): one table row per
    figure (project, baseline, unit, ratio, its definition, target, met), then per bench its sizes,
    command and details, the machine and versions, and the GPU script's status. ``runs``: per bench
    {"rc": exit status, "seconds": wall time}; a bench with no JSON is listed as failed. Returns the text."""
    lines = ["# Benchmark results", "",
             f"Written by `{command}`" + (f" in {wall_s / 60:.1f} min" if wall_s else "") + ". Every baseline was "
             "measured in the same run as the project's number. Each ratio is defined in its row.", "",
             "| figure | what | project | baseline | unit | ratio | ratio is | target | met |",
             "| --- | --- | ---: | ---: | --- | ---: | --- | --- | --- |"]
    figures = [f for res in results for f in res["figures"]]
    for f in sorted(figures, key=_figure_order):
        met = target_met(f.get("ratio"), f.get("target"))
        lines.append(f"| {f['id']} | {f['name']} | {_num(f['project'])} | {_num(f['baseline'])} | {f['unit']} | "
                     f"{_ratio(f['ratio'])} | {f['ratio_def']} | {f.get('target') or ''} | "
                     f"{'' if met is None else 'yes' if met else '**no**'} |")
    lines.append("")
    done = {r["bench"] for r in results}
    for name, run in sorted((runs or {}).items()):
        if name not in done:
            lines += [f"**{name} wrote no figures** (exit status {run.get('rc')} after {run.get('seconds', 0):.0f} s); "
                      "see its output in the make bench log.", ""]
    for res in results:
        run = (runs or {}).get(res["bench"], {})
        took = f" ({run['seconds']:.0f} s)" if "seconds" in run else ""
        lines += [f"## {res['bench']}{took}", "", f"- sizes: {res['sizes']}", f"- command: `{res['command']}`"]
        lines += [f"- {d}" for d in res.get("details", [])]
        lines.append("")
    lines += ["## GPU (benchmarks/gpu/bench_gpu.py)", ""]
    if gpu:
        lines.append(f"A GPU ({gpu}) was visible, but `make bench` does not run the GPU script; run "
                     "`python -m benchmarks.gpu.bench_gpu` (benchmarks/gpu/README.md) and record its figures here.")
    else:
        lines.append("No GPU was available: the GPU script was not run (its CPU smoke mode runs in `make test`).")
    lines += ["", "## Machine and versions", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


def load_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``*.json`` `record` wrote into ``folder``, sorted by bench name."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]
