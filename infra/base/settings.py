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

from gan_core.errors import UserError

DEFAULT_EXPERIMENT = "ganpipe"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"

# The preflight probe of an http(s) MLflow server (check_mlflow_reachable). MLflow's own client retries a
# server that does not answer for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 with exponential backoff:
# 249 s measured), which suits training (an outage must not kill it, infra.train.tracking) but not a command
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
    from gan_core.evaluate import default_cache_dir

    return default_cache_dir(local_home())


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


class ServiceUnreachable(UserError, RuntimeError):
    """A service at an address the user gave (RAY_ADDRESS, PREFECT_API_URL, AWS_ENDPOINT_URL,
    MLFLOW_TRACKING_URI) is malformed or did not answer the preflight probe; the message is one line naming
    the variable, the address, the cause and what to do (exit 2)."""


class MlflowUnreachable(ServiceUnreachable):
    """An http(s) MLflow server did not answer the preflight probe (or an SQLite store is damaged)."""


RAY_ADDRESS_ENV = "RAY_ADDRESS"
PREFECT_API_URL_ENV = "PREFECT_API_URL"
S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL"


def check_service_addresses(*, ray_address: str | None = None, prefect: bool = False, s3: bool = False) -> None:
    """The services a command will use, checked before it starts anything, each in at most
    PROBE_ATTEMPTS x PROBE_TIMEOUT_S seconds: ``ray_address`` (a Ray cluster given by address: "" or
    "local" = none), PREFECT_API_URL when ``prefect`` and set, AWS_ENDPOINT_URL when ``s3`` and set.
    Raises ServiceUnreachable naming the variable, the value and what is accepted."""
    if ray_address and ray_address != "local":
        check_ray_address(ray_address)
    api_url = os.environ.get(PREFECT_API_URL_ENV)
    if prefect and api_url:
        _check_http_service(api_url, PREFECT_API_URL_ENV, "the Prefect API", "e.g. http://127.0.0.1:4200/api")
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    if s3 and endpoint:
        _check_http_service(endpoint, S3_ENDPOINT_ENV, "the S3 endpoint", "e.g. http://127.0.0.1:9000", health=False)


def check_ray_address(address: str, name: str = RAY_ADDRESS_ENV) -> None:
    """A Ray cluster address: "auto" (a cluster started on this host with `ray start`), "host:port" (its
    GCS) or "ray://host:port" (Ray Client), whose port must accept a TCP connection (ray.init would wait
    minutes on a closed one). Raises ServiceUnreachable."""
    allowed = "auto, HOST:PORT (the head's GCS, e.g. 10.0.0.5:6379) or ray://HOST:PORT"
    if address == "auto":
        return  # resolved by Ray from this host's session files; ensure_ray reports a missing cluster
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if parts.scheme not in ("gcs", "ray") or not host or not port or parts.path not in ("", "/"):
        raise ServiceUnreachable(f"{name}: got {address!r}; allowed: {allowed}")
    cause = _tcp_probe_failure(host, port)
    if cause:
        raise ServiceUnreachable(f"{name}: the Ray cluster at {address} cannot be reached: {cause}; start it "
                                 f"(`ray start --head`), or unset {name} to use a local Ray instance")


def _check_http_service(url: str, name: str, what: str, example: str, health: bool = True) -> None:
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number, or out of range
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ServiceUnreachable(f"{name}: got {display_uri(url)!r}; allowed: an http(s) URL of {what}, {example}")
    if health:
        cause = _health_check_failure(url)
    else:
        cause = _tcp_probe_failure(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    if cause:
        raise ServiceUnreachable(f"{name}: {what} at {display_uri(url)} cannot be reached: {cause}; start it, or "
                                 f"set {name} to one that runs")


def _tcp_probe_failure(host: str, port: int) -> str | None:
    """None once a TCP connection to host:port opens (within PROBE_ATTEMPTS tries of PROBE_TIMEOUT_S),
    else why not."""
    cause = ""
    for attempt in range(PROBE_ATTEMPTS):
        if attempt:
            time.sleep(PROBE_PAUSE_S)
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            return None
        except OSError as e:
            cause = e.strerror or type(e).__name__
            if isinstance(e, socket.gaierror):
                return f"unknown host {host!r} ({cause})"
    return cause


def check_mlflow_reachable(*uris: str) -> None:
    """Fail fast (MlflowUnreachable) when an http(s) MLflow server among `uris` (default: the tracking and
    the registry URI) does not answer ``GET <uri>/health`` within PROBE_ATTEMPTS tries of PROBE_TIMEOUT_S.
    An SQLite store's file, when it exists, must be an SQLite database (MlflowUnreachable naming it: a
    truncated or overwritten mlflow.db is not a server error). Other stores (file paths, databricks) are
    not probed. Writes nothing, creates nothing."""
    for uri in dict.fromkeys(uris or (mlflow_tracking_uri(), mlflow_registry_uri())):
        if uri.startswith("sqlite:///"):
            _check_sqlite_store(uri)
        if not uri.startswith(("http://", "https://")):
            continue
        cause = _health_check_failure(uri)
        if cause:
            names = " / ".join(v for v in (TRACKING_URI_ENV, REGISTRY_URI_ENV) if os.environ.get(v) == uri)
            names = names or TRACKING_URI_ENV
            raise MlflowUnreachable(f"the MLflow server {display_uri(uri)} ({names}) cannot be reached: {cause}; "
                                    f"start it, or set {names} to a server that runs")


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def _check_sqlite_store(uri: str) -> None:
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return  # MLflow creates it
    except OSError as e:
        raise MlflowUnreachable(f"the MLflow store {path} ({TRACKING_URI_ENV}) cannot be read: {e.strerror}") from None
    if header and header != SQLITE_HEADER:
        raise MlflowUnreachable(f"the MLflow store {path} ({TRACKING_URI_ENV}) is not an SQLite database (damaged or "
                                "overwritten); move it aside to start a new store, or restore it from a backup")


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
