"""`ganpipe run`: the whole pipeline as the Prefect flow `gan-pipeline`: stage, train, evaluate,
register (champion rule), sample a preview, and publish a markdown report."""

from __future__ import annotations

import argparse
import json
import sys
import time

from pipelines.cli import UserError

EPILOG = """\
With nothing configured everything runs on this host under GANPIPE_HOME (default ~/.ganpipe): Ray
started locally, a temporary Prefect server, MLflow on SQLite, datasets in GANPIPE_HOME/data. Set
RAY_ADDRESS, PREFECT_API_URL, MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL (and [storage] root) to use
services instead.

A rerun reuses what is done: the staged dataset is content-addressed (cache hit: "already committed"),
and training resumes its run (same config + dataset = same run name) from the latest checkpoint.

examples:
  ganpipe run                                           # digits, the embedded default
  ganpipe run --preset ring8 --set train.total_steps=2000
  ganpipe run --config nightly.toml --set cluster.num_workers=4 --set cluster.use_gpu=true
  ganpipe run --config nightly.toml --dry-run           # print the resolved config (TOML) and stop
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the whole pipeline: stage, train, evaluate, register, sample",
                       description="Run the whole pipeline as the Prefect flow 'gan-pipeline': stage the dataset, "
                                   "train on Ray, evaluate G_ema against the real-vs-real floor, register it in "
                                   "MLflow (the alias moves only for a better version), and sample a preview grid.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as TOML and stop")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    p.set_defaults(func=run)
    return p


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """--preset / --config / --set, shared by run and deploy."""
    p.add_argument("--preset", help="GAN preset: tiny | digits | ring8 | grid25 | dcgan64 "
                                    "(default: the config file's, else digits)")
    p.add_argument("--config", metavar="FILE", help="config file (TOML); see README 'Configuration'")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a field, e.g. --set train.total_steps=500 --set registry.model_name=faces "
                        "(repeatable; values parse as JSON when they can)")


def resolve_request(args, **cluster_overrides):
    """(the config file's tree or None, Settings) from --preset/--config/--set (and explicit cluster
    flags): the file is read and every value parsed and validated once, here; a one-line UserError
    otherwise. The tree is what a deployment carries (workers need no file)."""
    from gan_core.config import ConfigError
    from pipelines.settings import read_config_file, resolve_settings

    try:
        tree = read_config_file(args.config) if args.config else None
        return tree, resolve_settings(preset=args.preset, config_data=tree, overrides=args.set,
                                      cluster_overrides=cluster_overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    _, settings = resolve_request(args)  # 1. full validation before anything starts
    if args.dry_run:
        sys.stdout.write(settings.to_toml())
        return 0
    from gan_core.config import ConfigError
    from infra.datasets import DatasetError
    from infra.sources import SourceError
    from infra.storage import StorageError

    print(f"ganpipe run: preset {settings.preset}, dataset {settings.source_uri} -> {settings.storage_root}, "
          f"model {settings.model_name}", file=sys.stderr)
    # 2. the services, side by side (a temporary Prefect server when PREFECT_API_URL is unset), then the flow
    from pipelines.services import ServiceError, start_embedded_services

    try:
        temporary_api_url = start_embedded_services(settings, getattr(args, "embedded_prefect_home", None))
        from pipelines.flow import gan_pipeline, summary_lines

        summary = gan_pipeline(settings=settings)
    except (ConfigError, DatasetError, SourceError, StorageError, ServiceError) as e:
        raise UserError(str(e)) from None
    # 3. where to look
    seconds = summary["seconds"]
    seconds = {"service start-up": round(summary["started_at"] - t_start, 1), **seconds,
               "total": round(time.time() - t_start, 1)}
    summary["seconds"] = seconds
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    print("\n".join(["", "ganpipe run: done"] + summary_lines(summary, temporary_api_url)), file=sys.stderr if args.json else sys.stdout)
    return 0
