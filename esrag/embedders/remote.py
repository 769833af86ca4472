"""What every remote embedder shares: settings, request sizing, retries, errors, checks on the answer.

A remote embedder (``tei``, ``openai_compat``) sends texts to an embedding server and implements one method,
``_post(texts) -> rows``, for its wire format; this module does the rest:

- **Sizing**: a call is cut into requests of at most ``batch_size`` texts (TEI's default limit is 32). A 413
  (batch or input too large) splits the request in halves, down to one text; one text that is still too
  large is an EmbeddingError naming its length.
- **Retries**: 429 and 502/503/504 (a full queue, a replica restarting behind a load balancer) are retried
  with exponential backoff (honouring ``Retry-After``) for at most ``retry_seconds`` in all; after that the
  call fails with EmbeddingTimeoutError. A refused connection, another 4xx/5xx or a malformed answer fails
  at once: retrying would not change it.
- **Errors** name the server's URL without its credentials, and never carry the API key. A request that
  takes longer than ``timeout`` raises EmbeddingTimeoutError (504 in the API), any other failure
  EmbeddingError (502).
- **Checks**: every answer must hold one finite vector per text, all of ``dims`` numbers (the first answer
  fixes ``dims`` unless it is configured); rows are L2-normalised here, whatever the server did.
- **Tokenizer**: loaded locally on first ``count_tokens`` (``esrag.embedders.tokenizer``), so the query
  side (``esrag serve``, ``search``) loads no model at all.

Thread-safe: any number of threads may call at once (that is how the ingest keeps several requests in
flight, ``in_flight``); each thread keeps its own keep-alive connection.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import re
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from esrag.embedders.base import Embedder
from esrag.embedders.tokenizer import LocalTokenizer, load_tokenizer
from esrag.errors import ConfigError, EmbeddingError, EmbeddingTimeoutError
from esrag.redact import mask_secrets, split_credentials

#: statuses retried within the retry budget: overloaded or restarting, not wrong
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: first backoff and its cap, in seconds
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
_SURROGATE = re.compile("[\ud800-\udfff]")


class RemoteSettings(BaseModel):
    """``[embedder.tei]`` / ``[embedder.openai_compat]`` in esrag.toml, or ``ESRAG_EMBEDDER_<NAME>_<KEY>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: the server: TEI's root URL, or an OpenAI-style base URL (``http://host:8000/v1``; ``/embeddings``
    #: is appended)
    url: str
    #: the model name sent to the server; default: esrag's ``model`` setting (what the index records)
    model: str | None = None
    #: a bearer token: best from the variable ESRAG_EMBEDDER_<NAME>_API_KEY, or from ``api_key_file``
    api_key: SecretStr | None = Field(None, repr=False)
    api_key_file: str | None = None
    #: seconds one request may take
    timeout: float = Field(60.0, gt=0, allow_inf_nan=False)
    #: seconds a call keeps retrying 429/502/503/504
    retry_seconds: float = Field(60.0, ge=0, allow_inf_nan=False)
    #: texts per request (TEI: --max-client-batch-size, 32 by default)
    batch_size: int = Field(32, ge=1, le=100_000)
    #: requests an ingest keeps in flight at once
    in_flight: int = Field(4, ge=1, le=256)
    #: the tokenizer that sizes chunks: a local directory or a packaged model name; default: ``model``
    tokenizer: str | None = None
    #: the longest text in tokens (special tokens excluded); default: read from the tokenizer's files
    max_tokens: int | None = Field(None, ge=1)
    #: the vector size; default: learnt from the first answer
    dims: int | None = Field(None, ge=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {split_credentials(url).url!r}")
        return url.rstrip("/")


def read_api_key(options: RemoteSettings, name: str) -> str | None:
    """The API key: ``api_key`` (the variable), else the first line of ``api_key_file``; ConfigError naming
    the file (never its content) when it cannot be read."""
    if options.api_key is not None:
        return options.api_key.get_secret_value() or None
    if options.api_key_file:
        path = Path(options.api_key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"embedder {name!r} setting api_key_file: cannot read {path}: "
                              f"{getattr(e, 'strerror', None) or type(e).__name__}") from e
        return (lines[0].strip() if lines else "") or None
    return None


class HttpStatus(Exception):
    """The server answered with an error status (internal: turned into an EsragError here)."""

    def __init__(self, status: int, body: str = "", retry_after: float | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class Unreachable(Exception):
    """No answer: the connection was refused, reset or closed (internal)."""


class TimedOut(Exception):
    """The answer took longer than the timeout (internal)."""


class Malformed(Exception):
    """The answer is not what the wire format says (internal)."""


def sendable(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate (which no JSON server accepts) becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (its delta-seconds form); None when absent or not a number."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


class RemoteEmbedder(Embedder):
    """Base of the remote embedders (see the module docstring). Subclasses implement ``_post``."""

    #: the plugin's name, for messages and settings
    plugin = "remote"

    def __init__(self, options: RemoteSettings, model_name: str, query_prefix: str = "",
                 passage_prefix: str = "") -> None:
        self.options = options
        self.model_name = model_name
        self.served_model = options.model or model_name
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.batch_size = options.batch_size
        self.in_flight = options.in_flight
        self.url = options.url
        #: the URL as messages show it: without credentials
        self.shown_url = split_credentials(options.url).url
        self.api_key = read_api_key(options, self.plugin)
        self._dims: int | None = options.dims
        self._tokenizer: LocalTokenizer | None = None
        self._tok_lock = threading.Lock()
        self._http = JsonHttp(options.url, options.timeout, self.api_key)

    # -- the one method a wire format implements -------------------------------------------------------

    @abstractmethod
    def _post(self, texts: list[str]) -> Any:
        """Send one request; return its rows (a sequence of number sequences, one per text). Raises
        HttpStatus, Unreachable, TimedOut or Malformed."""

    # -- Embedder ----------------------------------------------------------------------------------------

    @property
    def dims(self) -> int:  # type: ignore[override]
        if self._dims is None:
            self.embed_batch(["dimensions"])
        assert self._dims is not None
        return self._dims

    @property
    def max_tokens(self) -> int:  # type: ignore[override]
        return self.tokenizer.max_tokens

    @property
    def tokenizer(self) -> LocalTokenizer:
        """The local tokenizer, loaded on first use (ConfigError when it cannot be found)."""
        if self._tokenizer is None:
            with self._tok_lock:
                if self._tokenizer is None:
                    name = self.options.tokenizer or self.model_name
                    where = (f"[embedder.{self.plugin}] tokenizer (or ESRAG_EMBEDDER_{self.plugin.upper()}"
                             f"_TOKENIZER)")
                    self._tokenizer = load_tokenizer(name, self.options.max_tokens, where)
        return self._tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.tokenizer.count(list(texts)) if texts else []

    def ready(self) -> None:
        """One request of one short text, without retries: EmbeddingError when the server cannot embed."""
        try:
            self._checked(["ready"], self._send(["ready"], retry=False))
        except HttpStatus as e:
            raise self._status_error(e) from None

    def embed_urgent(self, texts: Sequence[str]) -> np.ndarray:
        """Queries: the same requests as bulk work (the server schedules them)."""
        return self.embed_batch(texts)

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in requests of at most ``batch_size`` (see the module docstring); float32 rows,
        L2-normalised, in the order of ``texts``."""
        texts = [sendable(t) for t in texts]
        if not texts:
            return np.zeros((0, self._dims or 0), dtype=np.float32)
        parts = [self._embed_split(texts[lo:lo + self.batch_size]) for lo in range(0, len(texts), self.batch_size)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # -- internals ---------------------------------------------------------------------------------------

    def _embed_split(self, texts: list[str]) -> np.ndarray:
        """One request, split in halves on 413 until it fits."""
        try:
            return self._checked(texts, self._send(texts, retry=True))
        except HttpStatus as e:
            if e.status != 413:
                raise self._status_error(e) from None
            if len(texts) == 1:
                raise EmbeddingError(
                    f"embedding server {self.shown_url} refused a text of {len(texts[0])} characters as too large "
                    f"(HTTP 413): lower chunk_size or raise the server's input limit") from None
            half = len(texts) // 2
            return np.concatenate([self._embed_split(texts[:half]), self._embed_split(texts[half:])])

    def _send(self, texts: list[str], retry: bool) -> Any:
        """``_post`` with the retry rules; raises HttpStatus for 413 (the caller splits) and EsragErrors for
        everything else."""
        deadline = time.monotonic() + (self.options.retry_seconds if retry else 0.0)
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                return self._post(texts)
            except HttpStatus as e:
                if e.status == 413:
                    raise
                if e.status not in RETRY_STATUSES:
                    raise self._status_error(e) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EmbeddingTimeoutError(
                        f"embedding server {self.shown_url} still answered HTTP {e.status} after "
                        f"{self.options.retry_seconds:g}s of retries; it is overloaded or down (raise "
                        f"[embedder.{self.plugin}] retry_seconds, lower in_flight)") from None
                wait = e.retry_after if e.retry_after is not None else backoff * (0.5 + random.random())
                time.sleep(min(wait, left))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except TimedOut:
                raise EmbeddingTimeoutError(
                    f"embedding server {self.shown_url} did not answer within {self.options.timeout:g}s "
                    f"([embedder.{self.plugin}] timeout)") from None
            except Unreachable as e:
                raise EmbeddingError(f"cannot reach the embedding server {self.shown_url}: "
                                     f"{self._clean(str(e))}") from None
            except Malformed as e:
                raise self._malformed(self._clean(str(e))) from None

    def _status_error(self, e: HttpStatus) -> EmbeddingError:
        body = self._clean(" ".join(e.body.split()))[:300]
        hint = f" (check [embedder.{self.plugin}] api_key)" if e.status in (401, 403) else ""
        return EmbeddingError(f"embedding server {self.shown_url} answered HTTP {e.status}{hint}"
                              + (f": {body}" if body else ""))

    def _clean(self, text: str) -> str:
        """``text`` without the API key or the URL's credentials."""
        parts = split_credentials(self.url)
        return mask_secrets(text, [self.api_key, parts.password])

    def _checked(self, texts: list[str], rows: Any) -> np.ndarray:
        """The answer as float32 rows, checked and L2-normalised (see the module docstring)."""
        try:
            arr = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise self._malformed(f"the vectors are not lists of numbers ({type(e).__name__})") from None
        if arr.ndim != 2 or arr.shape[0] != len(texts):
            raise self._malformed(f"expected {len(texts)} vectors, got an array of shape {arr.shape}")
        if self._dims is None:
            self._dims = int(arr.shape[1])
        if arr.shape[1] != self._dims:
            raise EmbeddingError(f"embedding server {self.shown_url} returned vectors of {arr.shape[1]} dims, "
                                 f"expected {self._dims}: is it serving another model than {self.served_model!r}?")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if not np.all(np.isfinite(arr)) or not np.all(norms > 0):
            raise self._malformed("a vector is zero or not finite")
        return arr / norms

    def _malformed(self, what: str) -> EmbeddingError:
        return EmbeddingError(f"malformed answer from the embedding server {self.shown_url}: {what}")


class JsonHttp:
    """POSTs JSON over one keep-alive connection per thread (``http.client``: no dependency). Credentials in
    the URL become a basic Authorization header; ``api_key`` a bearer one. Thread-safe."""

    def __init__(self, url: str, timeout: float, api_key: str | None) -> None:
        parts = split_credentials(url)
        split = urlsplit(parts.url)
        self.https = split.scheme == "https"
        self.host = split.hostname or ""
        self.port = split.port
        self.prefix = split.path.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        elif parts.username is not None:
            import base64

            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self._local = threading.local()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def post(self, path: str, payload: Any) -> Any:
        """POST ``payload`` as JSON to ``prefix + path``; the decoded JSON answer. HttpStatus for a status
        >= 400, TimedOut, Unreachable. A kept-alive connection the server closed meanwhile is retried once
        on a fresh one."""
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8", "replace")
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request("POST", (self.prefix + path) or "/", body=body, headers=self.headers)
                resp = conn.getresponse()
                data = resp.read()
            except TimeoutError as e:
                self._drop()
                raise TimedOut() from e
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                if reused and attempt == 0 and not isinstance(e, ConnectionRefusedError):
                    continue
                raise Unreachable(f"{type(e).__name__}: {e}") from e
            if resp.getheader("Connection", "").lower() == "close":
                self._drop()
            if resp.status >= 400:
                raise HttpStatus(resp.status, data.decode("utf-8", "replace"),
                                 retry_after_seconds(resp.getheader("Retry-After")))
            try:
                return json.loads(data)
            except ValueError as e:
                raise Malformed(f"the answer is not JSON ({e})") from e
        raise Unreachable("the connection closed twice")  # pragma: no cover - the loop returns or raises


def entry_point(cls: type[RemoteEmbedder]) -> Callable[[Any], RemoteEmbedder]:
    """The ``esrag.embedders`` entry point of the remote embedder ``cls``: builds it from its
    ``[embedder.<cls.plugin>]`` settings (url required) and the model settings; ``model_name_for`` names the
    model an index built with it records (the configured one, whatever the server calls it)."""

    def from_settings(settings: Any) -> RemoteEmbedder:
        from esrag import plugins

        options = plugins.plugin_settings(settings, plugins.EMBEDDERS, cls.plugin, RemoteSettings)
        return cls(options, settings.model, settings.query_prefix, settings.passage_prefix)

    def model_name_for(settings: Any) -> str:
        return str(settings.model)

    from_settings.model_name_for = model_name_for  # type: ignore[attr-defined]
    return from_settings
