"""`ganpipe models`: the registered generator versions, newest first per model, with the alias that
consumers load (``models:/<name>@champion``), the score that earned it, the dataset and the training run.

Read from MLflow's registry (MLFLOW_REGISTRY_URI, else the tracking store); listing never creates anything.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from infra.base.settings import display_uri
from gan_core.errors import UserError
from pipelines.commands.runs import aliases_by_version, format_table, listing, names_hint, utc_iso

EPILOG = """\
Each model starts with the line consumers need: models:/<name>@champion and the version it points at
(the alias moves only to a strictly better version, see 'ganpipe register'). PRIMARY is the metric the
champion decision compares (eval.primary = eval.value; max: higher is better, min: lower is better).
--json prints one item per version with every field.

examples:
  ganpipe models
  ganpipe models --name ganpipe-digits --limit 5
  ganpipe models --json | jq '.[] | select(.champion)'
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list registered model versions and which one is @champion",
                       description="List registered generator versions and the alias consumers load.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=None, help="one registered model (default: every model in the registry)")
    p.add_argument("--alias", default="champion", help="the alias consumers load (default: %(default)s)")
    p.add_argument("--limit", type=int, default=20,
                   help="show the newest N versions of each model (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON list (one item per version) instead of a table")
    p.set_defaults(func=run)
    return p


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def version_item(mv, aliases: list[str], alias: str, run_names: dict[str, str]) -> dict[str, Any]:
    """One model version as the listing shows it (the --json item)."""
    t = mv.tags or {}
    training_run = t.get("training_run_id") or mv.run_id or None
    hib = t.get("eval.higher_is_better")
    if hib is None and t.get("eval.primary"):  # a version tagged without it: the catalogue's direction
        from gan_core.metrics.catalogue import BY_NAME

        if t["eval.primary"] in BY_NAME:
            hib = str(BY_NAME[t["eval.primary"]].higher_is_better).lower()
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": aliases,
        "champion": alias in aliases,
        "uri": f"models:/{mv.name}/{mv.version}",
        "alias_uris": [f"models:/{mv.name}@{a}" for a in aliases],
        "primary_metric": t.get("eval.primary"),
        "value": _float_or_none(t.get("eval.value")),
        "higher_is_better": None if hib is None else hib == "true",
        "dataset_name": t.get("dataset.name") or None,
        "dataset_version": t.get("dataset.version") or None,
        "created": utc_iso(mv.creation_timestamp),
        "training_run_id": training_run,
        "training_run_name": run_names.get(training_run or "") or None,
        "champion_decision": t.get("champion.decision"),
    }


def _run_names(client, run_ids: set[str]) -> dict[str, str]:
    """{run id: ganpipe run name} for the runs that still exist."""
    from mlflow.exceptions import MlflowException

    from infra.train.tracking import TAG_RUN_NAME

    names = {}
    for rid in sorted(run_ids):
        try:
            r = client.get_run(rid)
        except MlflowException:  # deleted, or in another store
            continue
        names[rid] = r.data.tags.get(TAG_RUN_NAME) or r.info.run_name or ""
    return names


def _model_names(client) -> list[str]:
    """The registered models' names, sorted, without the registry's promotion locks (infra.models.registry:
    models named <name>.promotion-lock that exist only while an alias moves)."""
    from infra.models.registry import PROMOTION_LOCK_SUFFIX

    return sorted(m.name for m in client.search_registered_models() if not m.name.endswith(PROMOTION_LOCK_SUFFIX))


def list_models(client, registry_uri: str, name: str | None, alias: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` versions of model ``name`` (or of every registered model), by model name."""
    from mlflow.exceptions import MlflowException

    if name is not None:
        try:
            client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            names = _model_names(client)
            raise UserError(f"registered model {name!r} not found in {display_uri(registry_uri)}; "
                            f"{names_hint('models', names)}") from None
        model_names = [name]
    else:
        model_names = _model_names(client)
    versions = []
    for m in model_names:
        quoted = m.replace("'", "\\'")
        found = client.search_model_versions(f"name = '{quoted}'", max_results=limit,
                                             order_by=["version_number DESC"])
        versions.append((aliases_by_version(client, m), found))
    run_ids = {mv.tags.get("training_run_id") or mv.run_id for _, found in versions for mv in found} - {None, ""}
    run_names = _run_names(client, run_ids)
    return [version_item(mv, aliases.get(str(mv.version), []), alias, run_names)
            for aliases, found in versions for mv in found]


def _primary(it: dict[str, Any]) -> str:
    if not it["primary_metric"]:
        return "-"
    value = "?" if it["value"] is None else f"{it['value']:.4g}"
    direction = {True: " (max)", False: " (min)", None: ""}[it["higher_is_better"]]
    return f"{it['primary_metric']}={value}{direction}"


def format_models(items: list[dict[str, Any]], alias: str, limit: int) -> str:
    """Per model: a line with the alias consumers load, then its versions as aligned rows."""
    headers = ["VERSION", "ALIASES", "PRIMARY", "DATASET", "CREATED (UTC)", "TRAINING RUN"]
    caps = [7, 20, 28, 14, 16, 30]
    rows = [[it["version"], " ".join(f"@{a}" for a in it["aliases"]) or "-", _primary(it),
             it["dataset_version"] or "-", (it["created"] or "-").replace("T", " ")[:16],
             it["training_run_name"] or it["training_run_id"] or "-"] for it in items]
    table = format_table(headers, rows, caps, indent="  ").splitlines()
    out, header = [], table[0]
    for name in dict.fromkeys(it["name"] for it in items):  # model order as listed
        idx = [i for i, it in enumerate(items) if it["name"] == name]
        holder = next((items[i] for i in idx if alias in items[i]["aliases"]), None)
        n = min(len(idx), limit)
        shown = f"{'newest ' if len(idx) >= limit else ''}{n} version{'s' * (n != 1)}"
        if holder is not None:
            out.append(f"{name} ({shown}): models:/{name}@{alias} -> version {holder['version']}")
        else:
            out.append(f"{name} ({shown}): no @{alias} among these versions")
        out += [header] + [table[i + 1] for i in idx] + [""]
    return "\n".join(out).rstrip()


def run(args: argparse.Namespace) -> int:
    from infra.base.settings import mlflow_client, mlflow_registry_uri, mlflow_tracking_uri

    if args.limit < 1:
        raise UserError(f"--limit: got {args.limit}; allowed: an integer >= 1")
    uri, registry_uri = mlflow_tracking_uri(), mlflow_registry_uri()
    items = listing(registry_uri, f"registered model {args.name!r}" if args.name else None,
                    lambda: list_models(mlflow_client(uri, registry_uri), registry_uri, args.name, args.alias,
                                        args.limit))
    if args.json:
        print(json.dumps(items, indent=2))
    elif not items:
        print(f"no versions of model {args.name!r} in {display_uri(registry_uri)}" if args.name
              else f"no models in {display_uri(registry_uri)}")
    else:
        print(format_models(items, args.alias, args.limit))
    return 0
