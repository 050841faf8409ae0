"""Where services live when nothing says otherwise: one local home folder and the tools' own variables.

    GANPIPE_HOME         the local home (default ``~/.ganpipe``): embedded MLflow database, scratch
    MLFLOW_TRACKING_URI  MLflow's own variable; unset -> ``sqlite:///<home>/mlflow.db``
    MLFLOW_REGISTRY_URI  MLflow's own variable; unset -> the tracking URI

Every component reads its settings through these helpers, so the embedded defaults are in one place.
The CLI commands that need MLflow check an http(s) server with `check_mlflow_reachable` before any work.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_EXPERIMENT = "ganpipe"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"

# The preflight probe of an http(s) MLflow server (check_mlflow_reachable). MLflow's own client retries a
# server that does not answer for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 with exponential backoff:
# 249 s measured), which suits training (an outage must not kill it, infra.tracking) but not a command
# that has not started any work yet. Worst case: 3 x 3 s + 2 x 0.5 s = 10 s.
PROBE_ATTEMPTS = 3  # a server that is restarting gets a second and a third chance
PROBE_TIMEOUT_S = 3.0  # per attempt: connecting and the answer to GET /health
PROBE_PAUSE_S = 0.5  # between attempts


def local_home() -> Path:
    """The local home folder (created on first use)."""
    home = Path(os.environ.get("GANPIPE_HOME") or Path.home() / ".ganpipe").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir() -> Path:
    """Where the pipeline caches what it can rebuild (the digits classifier): $GANPIPE_CACHE_DIR, else
    <local home>/cache. Resolved on the driver and passed to workers, never re-read there."""
    from gan_core.evaluate import CACHE_ENV

    return Path(os.environ.get(CACHE_ENV) or local_home() / "cache")


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite under the local home (MLflow 3 refuses ./mlruns)."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{local_home() / 'mlflow.db'}"


def mlflow_registry_uri() -> str:
    return os.environ.get(REGISTRY_URI_ENV) or mlflow_tracking_uri()


def display_uri(uri: str) -> str:
    """The URI without credentials (``http://user:pass@host`` -> ``http://host``), fit to print."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))
    return uri


class MlflowUnreachable(RuntimeError):
    """An http(s) MLflow server did not answer the preflight probe; the message is one line naming the
    URI, the cause and what to do. The CLI reports it as a user error (exit 2)."""


def check_mlflow_reachable(*uris: str) -> None:
    """Fail fast (MlflowUnreachable) when an http(s) MLflow server among `uris` (default: the tracking and
    the registry URI) does not answer ``GET <uri>/health`` within PROBE_ATTEMPTS tries of PROBE_TIMEOUT_S.
    Other stores (sqlite:, file paths, databricks) are not probed. Writes nothing, creates nothing."""
    for uri in dict.fromkeys(uris or (mlflow_tracking_uri(), mlflow_registry_uri())):
        if not uri.startswith(("http://", "https://")):
            continue
        cause = _health_check_failure(uri)
        if cause:
            names = " / ".join(v for v in (TRACKING_URI_ENV, REGISTRY_URI_ENV) if os.environ.get(v) == uri)
            names = names or TRACKING_URI_ENV
            raise MlflowUnreachable(f"the MLflow server {display_uri(uri)} ({names}) cannot be reached: {cause}; "
                                    f"start it, or set {names} to a server that runs")


def _health_check_failure(uri: str) -> str | None:
    """None once ``GET <uri>/health`` (the MLflow server's health endpoint) gets an answer, else why not.
    Any answer but 408 and 5xx will do: the probe checks that the server is there, and those are the
    statuses MLflow's client would retry for minutes (a proxy in front of a stopped server says 502-504)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    url = f"{display_uri(uri).rstrip('/')}/health"  # /health needs no credentials
    start = time.monotonic()
    for attempt in range(PROBE_ATTEMPTS):
        if attempt:
            time.sleep(PROBE_PAUSE_S)
        try:
            urlopen(url, timeout=PROBE_TIMEOUT_S).close()
            return None
        except HTTPError as e:
            e.close()
            if e.code != 408 and e.code < 500:  # 401, 403, 404, 429: the server answered
                return None
            cause = f"HTTP {e.code} {e.reason}"
        except ValueError as e:  # a malformed URI: no retry helps
            return f"not a valid URL ({e})"
        except (URLError, OSError) as e:  # refused, timed out, reset; URLError wraps the socket's error
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLCertVerificationError):
                # NOTE: an answer. The certificate is MLflow's client's business (it has its own settings:
                # MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS), not this probe's.
                return None
            if isinstance(reason, socket.gaierror):  # an unknown host: no retry helps
                return f"unknown host ({reason.strerror})"
            cause = ("connection refused" if isinstance(reason, ConnectionRefusedError)
                     else f"no answer within {PROBE_TIMEOUT_S:g} s" if isinstance(reason, TimeoutError)
                     else str(reason))
    return f"{cause} ({PROBE_ATTEMPTS} tries in {time.monotonic() - start:.1f} s)"


def mlflow_client(tracking_uri: str | None = None, registry_uri: str | None = None):
    """The one MLflow client factory: explicit URIs, else MLflow's own resolution (MLFLOW_TRACKING_URI /
    MLFLOW_REGISTRY_URI, which the CLI entry point sets to the embedded default when nobody did).
    Returns ``mlflow.MlflowClient``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def default_artifact_location(experiment: str, tracking_uri: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts when nobody chose: next to a SQLite database
    (``<db folder>/artifacts/<experiment>``), never the working directory; None for a server, which
    decides itself (e.g. ``mlflow server --artifacts-destination s3://...``)."""
    uri = tracking_uri or mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts" / experiment).resolve().as_uri()
    return None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code's version: ``git:<sha>[-dirty]`` inside a checkout, else ``ganpipe==<version>``."""
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"git:{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"ganpipe=={version('ganpipe')}"
    except Exception:  # not installed as a distribution either
        return "unknown"
