"""The MLflow tracking server as a connection: it must answer ``/health`` (``check_reachable``), every MLflow request
to it is bounded by ``mlflow.timeout_s`` (``bound_requests``), and a request it fails after that — an HTTP error, a
timeout, a dropped connection — becomes one ``ServerError`` line naming the server, credentials redacted
(``server_error``, ``guarded_client``). Imports MLflow only inside functions."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.paths import redact

DEFAULT_TIMEOUT_S = 10.0


class ServerError(OptstepsError):
    """A tracking server that answered ``/health`` but failed an API request (an HTTP error, a timeout, a dropped
    connection): one line naming the server, what failed and the fix (``server_error``)."""


_HTTP_ENV: dict = {}  # the MLflow HTTP settings this process set itself (a user's own values are kept)


def bound_requests(timeout_s: float) -> None:
    """Bound every MLflow HTTP request by ``timeout_s`` (mlflow.timeout_s): MLflow's per-request timeout
    (``MLFLOW_HTTP_REQUEST_TIMEOUT``, whole seconds) and no retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 0;
    MLflow's default of 7 with exponential backoff spends minutes on a server that answers 503 or hangs). A value
    the user set in the environment wins; one this process set is replaced by the next call."""
    want = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(math.ceil(timeout_s)))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    for name, value in want.items():
        cur = os.environ.get(name)
        if cur is None or cur == _HTTP_ENV.get(name):
            os.environ[name] = _HTTP_ENV[name] = value


def _health_request(tracking_uri: str):
    """A GET of ``<tracking_uri>/health``, the URI's ``user:password@`` (if any) sent as basic auth, not as part of
    the host name."""
    import base64
    import urllib.parse
    import urllib.request

    u = urllib.parse.urlsplit(tracking_uri.rstrip("/") + "/health")
    host = u.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{u.port}" if u.port else "")
    req = urllib.request.Request(urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, "")))
    if u.username is not None:
        pair = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
        req.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    return req


def check_reachable(tracking_uri: str, timeout_s: float = DEFAULT_TIMEOUT_S, create: bool = True) -> None:
    """Refuse, in one line and within ``timeout_s``, a tracking URI that cannot work: an http(s) server that does not
    answer ``/health``, or (``create`` False) a sqlite file that does not exist. For a server, also bounds MLflow's
    own requests by ``timeout_s`` (``bound_requests``)."""
    m = re.match(r"^sqlite:///(.+)$", tracking_uri)
    if m and not create and m.group(1) != ":memory:" and not Path(m.group(1)).is_file():
        raise OptstepsError(
            f"there is no schedule registry at {redact(tracking_uri)} (no such database file); check the "
            "path, pass --tracking-uri, or run `optsteps stage register` (or `make run`) first."
        )
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    bound_requests(timeout_s)
    try:
        with urllib.request.urlopen(_health_request(tracking_uri), timeout=timeout_s) as r:  # noqa: S310
            r.read(64)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):  # up, but wants credentials: MLflow's own calls will say so
            return
        raise OptstepsError(
            f"the MLflow tracking server {redact(tracking_uri)} answered /health with HTTP {e.code}; check "
            "the URI (mlflow.tracking_uri or --tracking-uri) and the server."
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = redact(getattr(e, "reason", e))
        raise OptstepsError(
            f"cannot reach the MLflow tracking server {redact(tracking_uri)} within {timeout_s:g} s "
            f"({reason}); start it (`mlflow server …` or `docker compose up -d` in infra/compose), fix "
            "mlflow.tracking_uri or --tracking-uri, or raise mlflow.timeout_s."
        ) from None


_API_URL = re.compile(r"API request to (?:endpoint )?(?P<url>\S+?)[,.]?\s")


def server_error(exc: BaseException, tracking_uri: str | None = None, timeout_s: float | None = None):
    """``exc`` — an MLflow or HTTP exception from a request to a tracking server — as one ``ServerError`` line that
    names the server (credentials redacted), the endpoint, what went wrong and the fix; None for any other exception
    (an MLflow answer such as "no such model" stays MLflow's, for its caller to handle). ``tracking_uri`` None: the
    server is read from the message."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    text = str(exc)
    network = isinstance(exc, requests.exceptions.RequestException)
    if isinstance(exc, RestException):
        if exc.get_http_status_code() < 500:
            return None
    elif not network and not (isinstance(exc, MlflowException) and text.startswith("API request to ")):
        return None
    m = _API_URL.search(text + " ")
    url = m.group("url") if m else getattr(getattr(exc, "request", None), "url", None) or ""
    if tracking_uri is None:
        parts = re.match(r"^(https?://[^/\s]+)", url)
        tracking_uri = parts.group(1) if parts else "(unknown)"
    path = re.sub(r"^https?://[^/\s]+", "", url).split("?")[0]
    where = f" on {path}" if path else ""
    code = re.search(r"error code (\d{3})|too many (\d{3}) error responses", text)
    status = next((g for g in code.groups() if g), None) if code else None
    budget = f"{timeout_s:g} s (mlflow.timeout_s)" if timeout_s is not None else "MLflow's request timeout"
    server = f"the MLflow tracking server {redact(tracking_uri)}"
    if isinstance(exc, requests.exceptions.Timeout) or re.search(r"timeout exception|timed out", text, re.I):
        what = f"did not answer{where} within {budget}"
        fix = "check the server (its logs, its database and artifact store), or raise mlflow.timeout_s"
    elif status in ("401", "403"):
        what = f"refused the request{where} (HTTP {status})"
        fix = "pass credentials (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN)"
    elif status is not None:
        what = f"answered HTTP {status}{where}"
        fix = "check that it is an MLflow server and look at its logs (database, artifact store), then rerun"
    elif isinstance(exc, RestException):
        what = f"failed: {redact(text.splitlines()[0])[:200]}"
        fix = "look at the server's logs (its database and artifact store), then rerun"
    else:
        what = f"dropped the request{where} ({type(exc).__name__})"
        fix = "check that the server is still running (`docker compose ps` in infra/compose), then rerun"
    return ServerError(f"{server} answers /health but its API {what}; {fix}.")


class _Guarded:
    """An ``MlflowClient`` whose calls raise ``ServerError`` (one line, ``server_error``) instead of MLflow's or
    urllib3's exceptions when the tracking server fails; every other exception passes unchanged."""

    def __init__(self, client, tracking_uri: str, timeout_s: float):
        self._client, self._uri, self._timeout = client, tracking_uri, timeout_s

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except Exception as e:
                err = server_error(e, self._uri, self._timeout)
                if err is None:
                    raise
                raise err from None

        return call


def guarded_client(client, tracking_uri: str, timeout_s: float):
    """``client`` (an ``MlflowClient`` of the server ``tracking_uri``) whose failing calls raise ``ServerError``."""
    return _Guarded(client, tracking_uri, timeout_s)
