"""`ganpipe runs`: the training runs of an MLflow experiment, newest first: how far each got, its last
checkpoint, its MLflow page and the registered versions made from it.

The store is MLflow's own (MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, else the embedded SQLite store under
GANPIPE_HOME). Listing never creates anything: a SQLite store that does not exist yet holds no runs.
This module also holds what `ganpipe models` shares with it: opening the store, the aligned table.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from typing import Any, Callable

from infra.base.settings import check_mlflow_reachable, display_uri
from gan_core.errors import UserError

EPILOG = """\
A training run is a run that carries the ganpipe.run_name tag (the short runs that record a registration
from a bare checkpoint are left out). STEP/TOTAL is the run's last progress/step metric over its
train.total_steps param; REGISTERED lists the model versions logged from the run (@alias when one
points at it). Under each row: the last checkpoint and the run's MLflow page (its id for a store
without a UI). --json prints every field, full values.

examples:
  ganpipe runs
  ganpipe runs --experiment ganpipe --limit 5        # the default experiment, the last 5 runs
  MLFLOW_TRACKING_URI=http://mlflow.internal:5000 ganpipe runs --json
"""

TABLE_WIDTH = 100  # the tables are sized to read in a 100-column terminal
MAX_NAMES_SHOWN = 10  # "experiments: a, b, ..." in a not-found message

# Names written by infra.train.tracking (params and metrics) that the listing reads back.
PARAM_TOTAL_STEPS = "train.total_steps"
METRIC_STEP = "progress/step"
METRIC_KIMG = "progress/kimg"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("runs", help="list training runs: progress, checkpoint, MLflow link, registered versions",
                       description="List the training runs of an MLflow experiment, newest first.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default=None,
                   help="MLflow experiment name (default: ganpipe, the experiment training writes to)")
    p.add_argument("--limit", type=int, default=20, help="show the newest N runs (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)
    return p


# -- shared with `ganpipe models` ---------------------------------------------------------------------
def sqlite_file_missing(uri: str) -> bool:
    """True for a ``sqlite:///path`` store whose database file does not exist (nothing recorded yet)."""
    return uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):])


def listing(uri: str, named: str | None, read: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`read()` against the store at `uri`, or [] when a SQLite store does not exist yet (opening it would
    create the database) — a UserError then if the user `named` something in it. One line for an
    unreachable server (infra.base.settings.check_mlflow_reachable: seconds, not MLflow's minutes of retries) or
    a store failing mid-listing."""
    import sqlite3

    from mlflow.exceptions import MlflowException

    if sqlite_file_missing(uri):
        if named:
            raise UserError(f"{named} not found: no MLflow store at {uri} yet")
        return []
    check_mlflow_reachable(uri)
    try:
        return read()
    except (MlflowException, OSError) as e:
        raise store_error(uri, e) from None
    except Exception as e:  # a damaged SQLite store: the database layer's error wraps sqlite3's (``orig``)
        if isinstance(getattr(e, "orig", None), sqlite3.Error):
            raise store_error(uri, e) from None
        raise


def store_error(uri: str, e: BaseException) -> UserError:
    """One line for a store that failed mid-listing (network, permissions, a corrupt database)."""
    first = (getattr(e, "message", None) or str(e) or type(e).__name__).strip().splitlines()[0][:200]
    return UserError(f"MLflow store {display_uri(uri)} failed: {first}")


def names_hint(kind: str, names: list[str]) -> str:
    """'experiments: a, b' (at most MAX_NAMES_SHOWN), or 'no experiments exist'."""
    if not names:
        return f"no {kind} exist"
    shown = ", ".join(sorted(names)[:MAX_NAMES_SHOWN])
    return f"{kind}: {shown}{', ...' if len(names) > MAX_NAMES_SHOWN else ''}"


def utc_iso(ms: int | None) -> str | None:
    """MLflow's millisecond timestamps as ``2026-11-30T09:41:07Z``."""
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def format_table(headers: list[str], rows: list[list[str]], caps: list[int], indent: str = "",
                 details: list[str] | None = None) -> str:
    """Columns as wide as their widest cell up to ``caps`` (longer cells end in "…"), two spaces apart;
    the last column takes what is left of TABLE_WIDTH. ``details``: one indented line under each row."""
    widths = [min(max([len(h)] + [len(r[i]) for r in rows]), cap) for i, (h, cap) in enumerate(zip(headers, caps))]
    widths[-1] = max(TABLE_WIDTH - len(indent) - sum(widths[:-1]) - 2 * (len(widths) - 1), len(headers[-1]))

    def line(cells: list[str]) -> str:
        return (indent + "  ".join(shorten(c, w).ljust(w) for c, w in zip(cells, widths))).rstrip()

    out = [line(headers)]
    for i, r in enumerate(rows):
        out.append(line(r))
        if details is not None:
            out.append(indent + "  " + details[i])
    return "\n".join(out)


def version_label(name: str, version: str, aliases: list[str]) -> str:
    return f"{name} v{version}" + "".join(f" @{a}" for a in aliases)


def aliases_by_version(client, model_name: str) -> dict[str, list[str]]:
    """{version: [alias, ...]} of a registered model (search results carry no aliases; the model does)."""
    out: dict[str, list[str]] = {}
    for alias, version in sorted(client.get_registered_model(model_name).aliases.items()):
        out.setdefault(str(version), []).append(alias)
    return out


# -- runs ---------------------------------------------------------------------------------------------
def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI for a tracking server, else the run id (a SQLite store has no UI)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{display_uri(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return run_id


def registered_versions(client, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """{run id: [{name, version, aliases, uri}]}: versions logged from the run (their run_id) or whose
    ``training_run_id`` tag names it (tags cannot be searched with IN: one query per run)."""
    if not run_ids:
        return {}
    found: dict[tuple[str, str], Any] = {}
    quoted = ", ".join(f"'{r}'" for r in run_ids)
    for mv in client.search_model_versions(f"run_id IN ({quoted})"):
        found[(mv.name, str(mv.version))] = mv
    for r in run_ids:
        for mv in client.search_model_versions(f"tags.`training_run_id` = '{r}'"):
            found[(mv.name, str(mv.version))] = mv
    aliases = {name: aliases_by_version(client, name) for name in sorted({n for n, _ in found})}
    out: dict[str, list[dict[str, Any]]] = {}
    for (name, version), mv in sorted(found.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
        item = {"name": name, "version": version, "aliases": aliases[name].get(version, []),
                "uri": f"models:/{name}/{version}"}
        for rid in {mv.run_id, (mv.tags or {}).get("training_run_id")} & set(run_ids):
            out.setdefault(rid, []).append(item)
    return out


def _int_or_none(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def run_item(r, tracking_uri: str, versions: list[dict[str, Any]]) -> dict[str, Any]:
    """One run as the listing shows it (the --json item)."""
    from infra.train.tracking import PARAM_DATASET_VERSION, TAG_LAST_CHECKPOINT, TAG_RUN_NAME

    tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
    return {
        "name": tags.get(TAG_RUN_NAME) or r.info.run_name or "",
        "run_id": r.info.run_id,
        "dataset_version": params.get(PARAM_DATASET_VERSION) or None,
        "step": _int_or_none(metrics.get(METRIC_STEP)),
        "total_steps": _int_or_none(params.get(PARAM_TOTAL_STEPS)),
        "kimg": metrics.get(METRIC_KIMG),
        "status": r.info.status,
        "started": utc_iso(r.info.start_time),
        "last_checkpoint": tags.get(TAG_LAST_CHECKPOINT) or None,
        "link": run_link(tracking_uri, r.info.experiment_id, r.info.run_id),
        "versions": versions,
    }


def list_runs(client, tracking_uri: str, experiment: str, limit: int, explicit: bool) -> list[dict[str, Any]]:
    """The newest ``limit`` training runs of ``experiment``. A missing experiment is a UserError when the
    user named it; the default one simply has no runs until the first training."""
    from infra.train.tracking import TAG_RUN_NAME

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        if not explicit:
            return []
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"experiment {experiment!r} not found in {display_uri(tracking_uri)}; "
                        f"{names_hint('experiments', names)}")
    # LIKE '%' matches every run that has the tag, empty names included; registration runs have none
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_NAME}` LIKE '%'",
                              max_results=limit, order_by=["attributes.start_time DESC"])
    versions = registered_versions(client, [r.info.run_id for r in runs])
    return [run_item(r, tracking_uri, versions.get(r.info.run_id, [])) for r in runs]


def format_runs(items: list[dict[str, Any]]) -> str:
    def progress(it: dict[str, Any]) -> str:
        step = "-" if it["step"] is None else str(it["step"])
        return step if it["total_steps"] is None else f"{step}/{it['total_steps']}"

    rows = [[it["name"] or "-", it["dataset_version"] or "-", progress(it), it["status"],
             ", ".join(version_label(v["name"], v["version"], v["aliases"]) for v in it["versions"]) or "-"]
            for it in items]
    details = []
    for it in items:
        ckpt = (it["last_checkpoint"] or "").rstrip("/").rsplit("/", 1)[-1] or "(no checkpoint)"
        link = it["link"] if "://" in it["link"] else f"run {it['link']}"
        details.append(f"{ckpt}  {link}")
    return format_table(["NAME", "DATASET", "STEP/TOTAL", "STATUS", "REGISTERED"], rows,
                        caps=[28, 14, 17, 9, 40], details=details)


def run(args: argparse.Namespace) -> int:
    from infra.base.settings import DEFAULT_EXPERIMENT, mlflow_client, mlflow_registry_uri, mlflow_tracking_uri

    if args.limit < 1:
        raise UserError(f"--limit: got {args.limit}; allowed: an integer >= 1")
    uri = mlflow_tracking_uri()
    experiment = args.experiment or DEFAULT_EXPERIMENT
    items = listing(uri, f"experiment {experiment!r}" if args.experiment else None,
                    lambda: list_runs(mlflow_client(uri, mlflow_registry_uri()), uri, experiment, args.limit,
                                      explicit=args.experiment is not None))
    if args.json:
        print(json.dumps(items, indent=2))
    elif not items:
        print(f"no runs in experiment {experiment!r} at {display_uri(uri)}")
    else:
        print(format_runs(items))
    return 0
