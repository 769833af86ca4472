"""The Elasticsearch connection: client construction with credentials and TLS, the first-use server check,
turning client exceptions into esrag errors, and the retry policy for back-pressure.

Credentials: a ``user:password@`` in ``es_url`` is taken out of the URL by parsing (``esrag.redact``) and
sent as basic auth; ``es_api_key`` wins over basic auth. No message built here contains a credential: URLs
are always the redacted ``location``. Basic auth over plain ``http://`` to a host other than loopback, and
``es_verify_certs = false``, each log a warning every time a client is made.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, SerializationError, TlsError, TransportError
from elasticsearch import (
    ApiError,
    AuthenticationException,
    AuthorizationException,
    Elasticsearch,
    UnsupportedProductError,
)

from esrag.config import Settings
from esrag.errors import (
    ConfigError,
    EsragError,
    IndexNotFoundError,
    StoreConnectionError,
    StoreError,
    StoreForbiddenError,
    StoreTimeoutError,
    setting,
)
from esrag.redact import mask_secrets, split_credentials

log = logging.getLogger("esrag.stores.elasticsearch")

#: Client-level retries of a request that failed to connect (a stale pooled connection, a reset). Timeouts
#: are not retried by the client: a search must fail within ``es_timeout``, not a multiple of it.
CLIENT_MAX_RETRIES = 1
#: Whole-request and per-item statuses that mean "try again later".
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Backoff: the first wait and the cap of one wait, in seconds (before jitter).
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
#: Default of ``es_retry_seconds`` when the Settings in use predate it.
DEFAULT_RETRY_SECONDS = 60.0


def fast_serializers() -> dict[str, Any]:
    """The client's JSON serializers, with orjson doing the work: parsing a 200-hit ``_msearch`` response
    with the stdlib ``json`` module is most of the client-side cost of a hybrid query."""
    import orjson
    from elasticsearch import serializer as es_ser

    class _Orjson:
        default: Any

        def json_loads(self, data: bytes) -> Any:
            return orjson.loads(data)

        def json_dumps(self, data: Any) -> bytes:
            return orjson.dumps(data, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY)

    classes = (es_ser.JsonSerializer, es_ser.NdjsonSerializer, es_ser.CompatibilityModeJsonSerializer,
               es_ser.CompatibilityModeNdjsonSerializer)
    return {cls.mimetype: type(f"Orjson{cls.__name__}", (_Orjson, cls), {})() for cls in classes}


# -- error bodies -------------------------------------------------------------------------------------------


def error_reason(body: Any, fallback: str = "") -> str:
    """The useful part of an ES error body: ``type: reason`` of the root cause plus the innermost
    ``caused_by`` reason when it says something else."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, str):
        return err
    if not isinstance(err, dict):
        if body in (None, "", b""):
            return fallback or "empty response"
        return fallback or str(body)[:300]
    root = (err.get("root_cause") or [err])[0]
    text = f"{root.get('type', err.get('type', 'error'))}: {root.get('reason', err.get('reason', ''))}"
    inner = err
    while isinstance(inner.get("caused_by"), dict):
        inner = inner["caused_by"]
    reason = inner.get("reason")
    if inner is not err and reason and reason not in text:
        text += f" ({reason})"
    return text


def api_reason(e: ApiError) -> str:
    """The reason of an ApiError, from its body, else its message."""
    message = str(e.message) if e.message not in (None, "None", "") else ""
    return error_reason(e.body, message)


def error_type(body: Any) -> str:
    err = body.get("error") if isinstance(body, dict) else None
    return str(err.get("type", "")) if isinstance(err, dict) else ""


# -- retry policy -------------------------------------------------------------------------------------------


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a budget of time without progress.

    ``budget_s`` is how long requests may keep failing (whole-request 429/502/503/504, connection errors,
    timeouts, or every item of a bulk rejected with 429/503) before esrag gives up: the clock starts at the
    first failure and stops at the next request that makes progress, so a 429 storm that lets some work
    through slows an ingest down without failing it. Once the budget is spent, later requests are tried
    once each (no waiting) until one succeeds. Thread-safe.

    Wait ``n`` (from 0) is uniform in ``[c/2, c]`` with ``c = min(max_s, initial_s * 2**n)`` ("equal
    jitter"), at least the server's ``Retry-After``, and never past the budget.
    """

    budget_s: float = DEFAULT_RETRY_SECONDS
    initial_s: float = INITIAL_BACKOFF_S
    max_s: float = MAX_BACKOFF_S
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _failing_since: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def progress(self) -> None:
        """A request made progress: the budget is whole again."""
        with self._lock:
            self._failing_since = None

    def remaining(self) -> float:
        """Seconds of budget left, starting the clock if it is not running."""
        with self._lock:
            now = self.clock()
            if self._failing_since is None:
                self._failing_since = now
            return self._failing_since + self.budget_s - now

    def wait(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Sleep before retry ``attempt`` (0-based) and return the seconds slept, or None (no sleep) when
        the budget is spent: the caller gives up."""
        left = self.remaining()
        if left <= 0:
            return None
        cap = min(self.max_s, self.initial_s * (2 ** min(attempt, 30)))
        delay = self.rng.uniform(cap / 2, cap)
        if retry_after is not None:
            delay = max(delay, retry_after)
        delay = min(delay, left)
        self.sleep(delay)
        return delay


def retry_after_s(e: ApiError) -> float | None:
    """The ``Retry-After`` header of an error response, in seconds, when it is a number."""
    headers = getattr(e.meta, "headers", None) or {}
    raw = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except (TypeError, ValueError):
        return None


def is_retryable(e: Exception) -> bool:
    """Whether a whole-request failure is worth retrying: back-pressure, a gateway error, a connection
    error or a timeout."""
    if isinstance(e, ApiError):
        return e.meta.status in RETRY_STATUSES
    return isinstance(e, TransportConnectionError | ConnectionTimeout) and not isinstance(e, TlsError)


# -- connecting ---------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Connection:
    """What the client is built from: the URL without credentials, and the auth to send."""

    url: str
    location: str
    basic_auth: tuple[str, str] | None
    api_key: str | None

    def __repr__(self) -> str:  # never show the credentials
        auth = "api_key" if self.api_key else "basic" if self.basic_auth else None
        return f"Connection({self.location!r}, auth={auth})"


def resolve_connection(settings: Settings) -> Connection:
    """Split ``settings.es_url`` into a clean URL and credentials. URL credentials are used when
    ``es_username``/``es_password`` are not set; ``es_api_key`` wins over both."""
    if not settings.es_url:
        raise ConfigError(f"the elasticsearch store needs {setting('es_url')}", field="es_url")
    parts = split_credentials(settings.es_url.strip())
    url = parts.url.rstrip("/")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"invalid es_url {url!r}: expected http(s)://host[:port]")
    user = settings.es_username or parts.username
    password = settings.es_password if settings.es_password is not None else parts.password
    basic = (user, password or "") if user else None
    return Connection(url=url, location=url, basic_auth=basic, api_key=settings.es_api_key or None)


def warn_insecure(settings: Settings, conn: Connection) -> None:
    """Warn (every time a client is made) about credentials sent in clear text and about TLS verification
    being off."""
    parts = urlsplit(conn.url)
    if (conn.basic_auth or conn.api_key) and parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        log.warning(
            "sending Elasticsearch credentials over plain http to %s: anyone on the network can read them; "
            "use https://", conn.location,
        )
    if not settings.es_verify_certs:
        log.warning(
            "TLS certificate verification is off for %s (es_verify_certs = false): the connection can be "
            "intercepted; set es_ca_certs instead", conn.location,
        )


def make_client(settings: Settings, conn: Connection) -> Elasticsearch:
    """An unchecked client for ``conn`` (no I/O)."""
    kwargs: dict[str, Any] = {
        "request_timeout": settings.es_timeout,
        "retry_on_timeout": False,
        "retry_on_status": (),  # statuses are retried by esrag, with backoff, where it is safe and useful
        "max_retries": CLIENT_MAX_RETRIES,
        "verify_certs": settings.es_verify_certs,
        "serializers": fast_serializers(),
    }
    if conn.api_key:
        kwargs["api_key"] = conn.api_key
    elif conn.basic_auth:
        kwargs["basic_auth"] = conn.basic_auth
    if settings.es_ca_certs:
        kwargs["ca_certs"] = settings.es_ca_certs
    if not settings.es_verify_certs:
        kwargs["ssl_show_warn"] = False
    warn_insecure(settings, conn)
    try:
        return Elasticsearch(conn.url, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid Elasticsearch settings for {conn.location}: {_clean(e, settings)}") from e


def _clean(e: BaseException | str, settings: Settings) -> str:
    """An exception's text with every configured secret masked."""
    return mask_secrets(str(e), (settings.es_password, settings.es_api_key, split_credentials(
        settings.es_url or "").password))


# -- error translation --------------------------------------------------------------------------------------


class ErrorTranslator:
    """Turns client and transport exceptions into esrag errors naming the redacted URL, the index and what
    was being done. No message carries a credential."""

    def __init__(self, settings: Settings, location: str, alias: str) -> None:
        self.settings = settings
        self.location = location
        self.alias = alias

    def clean(self, e: BaseException | str) -> str:
        return _clean(e, self.settings)

    def missing(self) -> IndexNotFoundError:
        return IndexNotFoundError(
            f"index '{self.alias}' not found at {self.location}; run `esrag ingest` (or `esrag init`) first"
        )

    def item(self, item: dict[str, Any], action: str) -> StoreError:
        """The error for one failed item of a multi-response (``mget`` doc, ``_msearch`` response)."""
        if error_type(item) == "index_not_found_exception":
            return self.missing()
        if item.get("status") in (401, 403):
            return StoreForbiddenError(f"Elasticsearch at {self.location} refused {action}: "
                                       f"{self.clean(error_reason(item))}")
        return StoreError(f"Elasticsearch at {self.location} failed {action}: {self.clean(error_reason(item))}")

    def reason(self, e: Exception) -> str:
        """A short reason for a failed request: ``HTTP 429: ...``, ``timed out after 30 s``, ..."""
        if isinstance(e, ApiError):
            return f"HTTP {e.meta.status}: {self.clean(api_reason(e))}"
        if isinstance(e, ConnectionTimeout):
            return f"no answer within {self.settings.es_timeout:g} s"
        if isinstance(e, TransportError):
            return f"connection failed: {self.clean(e.message)}"
        return self.clean(f"{type(e).__name__}: {e}")

    def translate(self, e: Exception, action: str, timeout: float | None = None) -> EsragError:
        """The esrag error for a client/transport exception raised while ``action``."""
        where = f"Elasticsearch at {self.location}"
        if isinstance(e, UnsupportedProductError):
            return StoreConnectionError(f"the server at {self.location} is not Elasticsearch: "
                                        f"{self.clean(e.message)}")
        if isinstance(e, AuthenticationException):
            return StoreForbiddenError(
                f"authentication failed at {self.location} (HTTP 401) while {action}: check "
                f"{setting('es_api_key')} or {setting('es_username')}/{setting('es_password')}"
            )
        if isinstance(e, AuthorizationException):
            return StoreForbiddenError(
                f"not authorized at {self.location} (HTTP 403) while {action} on index '{self.alias}': "
                f"{self.clean(api_reason(e))}"
            )
        if isinstance(e, ApiError):
            if e.meta.status == 404 and error_type(e.body) == "index_not_found_exception":
                return self.missing()
            return StoreError(
                f"{where} failed {action} on index '{self.alias}' (HTTP {e.meta.status}): "
                f"{self.clean(api_reason(e))}"
            )
        if isinstance(e, TlsError):
            return StoreConnectionError(
                f"TLS error connecting to {self.location}: {self.clean(e.message)}; check "
                f"{setting('es_ca_certs')} / {setting('es_verify_certs')}"
            )
        if isinstance(e, ConnectionTimeout):
            secs = timeout if timeout is not None else self.settings.es_timeout
            return StoreTimeoutError(f"{where} did not answer within {secs:g} s while {action}")
        if isinstance(e, TransportConnectionError):
            return StoreConnectionError(f"cannot connect to {where} while {action}: {self.clean(e.message)}")
        if isinstance(e, SerializationError):
            return StoreError(f"unexpected response from {self.location} while {action}: {self.clean(e)}")
        return StoreError(f"{where} failed {action} on index '{self.alias}': {self.clean(e)}")


def check_server(client: Elasticsearch, settings: Settings, errors: ErrorTranslator) -> None:
    """``GET /`` with ``es_connect_timeout`` and no retry: the server is there, is Elasticsearch 8+, and
    accepts the credentials. Closes the client and raises StoreConnectionError otherwise."""
    location = errors.location
    try:
        info = client.options(request_timeout=settings.es_connect_timeout, max_retries=0).info()
    except AuthorizationException:
        # Authenticated, but without the cluster privilege GET / needs; index operations will say if the
        # index privileges are missing too.
        return
    except ApiError as e:
        client.close()
        if isinstance(e, UnsupportedProductError | AuthenticationException):
            raise errors.translate(e, "connecting") from e
        kind = "is not ready" if e.meta.status >= 500 else "does not look like Elasticsearch"
        raise StoreConnectionError(
            f"the server at {location} {kind}: GET / answered HTTP {e.meta.status} "
            f"({errors.clean(api_reason(e))})"
        ) from e
    except TransportError as e:
        client.close()
        raise errors.translate(e, "connecting", timeout=settings.es_connect_timeout) from e
    version = str(info.get("version", {}).get("number", "")) if isinstance(info.body, dict) else ""
    if not version or not version.split(".")[0].isdigit():
        client.close()
        raise StoreConnectionError(f"the server at {location} does not look like Elasticsearch")
    if int(version.split(".")[0]) < 8:
        client.close()
        raise StoreConnectionError(
            f"Elasticsearch at {location} is version {version}; esrag needs 8.x or later (kNN search)"
        )
