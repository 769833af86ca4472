"""ElasticsearchStore: the Store protocol over an Elasticsearch 8.x cluster (or an ES-compatible server).

Users address the alias ``settings.index``; ``ensure_index`` creates the concrete index ``<index>-v1`` behind
it, so that a later rebuild can fill a new concrete index and swap the alias atomically. A plain index that
already carries the alias's name is used as is, provided it was created by esrag (has esrag ``_meta``).

Request bodies come from the pure builders in ``esrag.stores.es_queries``; this module only runs them and
turns every client or transport exception into an ``esrag.errors.StoreError`` subclass whose message names
the URL and the index. The client is created on first use, not in the constructor, and that first use
checks the server with a short timeout (``es_connect_timeout``) so a wrong URL fails in seconds.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, SerializationError, TlsError, TransportError
from elasticsearch import (
    ApiError,
    AuthenticationException,
    AuthorizationException,
    Elasticsearch,
    UnsupportedProductError,
    helpers,
)

from esrag.config import Settings
from esrag.errors import (
    ConfigError,
    CorruptStoreError,
    EsragError,
    IndexNotFoundError,
    ModelMismatchError,
    StoreConnectionError,
    StoreError,
)
from esrag.stores import es_queries as q
from esrag.types import (
    ChunkRef,
    Counts,
    EmbeddedChunk,
    IndexMeta,
    ScoredChunk,
    SearchRequest,
    SearchResponse,
    WriteError,
    WriteResult,
)

#: Suffix of the concrete index created behind the alias.
CONCRETE_SUFFIX = "-v1"
#: Bulk: documents per request, attempts for items rejected with these statuses, backoff in seconds.
BULK_CHUNK_SIZE = 500
BULK_MAX_RETRIES = 3
BULK_RETRY_STATUSES = (429, 500, 502, 503, 504)
BULK_INITIAL_BACKOFF_S = 1.0
BULK_MAX_BACKOFF_S = 30.0
#: ``streaming_bulk`` retries statuses other than 429 only from elasticsearch-py 8.16; older clients retry
#: 429 alone.
_BULK_RETRY_KW: dict[str, Any] = (
    {"retry_on_status": BULK_RETRY_STATUSES}
    if "retry_on_status" in inspect.signature(helpers.streaming_bulk).parameters
    else {}
)
#: Ids / doc ids per mget, delete or list request, and hits per ``list_chunks`` page.
ID_BATCH = 1000
DOC_ID_BATCH = 500
REFS_PAGE = 5000
#: Client-level retries of a failed request (connection errors, timeouts) after the first check.
CLIENT_MAX_RETRIES = 2


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


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


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


class ElasticsearchStore:
    """Chunks in one Elasticsearch index (see the module docstring for the alias scheme).

    Thread-safe: the underlying client is, and the lazy connection is made under a lock.
    """

    name = "elasticsearch"

    def __init__(self, settings: Settings) -> None:
        """Remember the settings; no I/O. Raises ConfigError when ``settings.es_url`` is not set."""
        if not settings.es_url:
            raise ConfigError("the elasticsearch store needs es_url (ESRAG_ES_URL or --es-url)")
        self.settings = settings
        self.url = settings.es_url.rstrip("/")
        self.location = redact_url(self.url)
        self.alias = settings.index
        self.concrete_name = f"{settings.index}{CONCRETE_SUFFIX}"
        self._client: Elasticsearch | None = None
        self._lock = threading.Lock()
        self._concrete: list[str] | None = None

    # -- connection -------------------------------------------------------------------------------------

    @property
    def client(self) -> Elasticsearch:
        """The connected client, created and checked (``GET /`` with ``es_connect_timeout``) on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> Elasticsearch:
        s = self.settings
        kwargs: dict[str, Any] = {
            "request_timeout": s.es_timeout,
            "retry_on_timeout": True,
            "max_retries": CLIENT_MAX_RETRIES,
            "verify_certs": s.es_verify_certs,
        }
        if s.es_api_key:
            kwargs["api_key"] = s.es_api_key
        elif s.es_username:
            kwargs["basic_auth"] = (s.es_username, s.es_password or "")
        if s.es_ca_certs:
            kwargs["ca_certs"] = s.es_ca_certs
        if not s.es_verify_certs:
            kwargs["ssl_show_warn"] = False
        kwargs["serializers"] = fast_serializers()
        try:
            client = Elasticsearch(self.url, **kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"invalid Elasticsearch settings for {self.location}: {e}") from e
        try:
            info = client.options(request_timeout=s.es_connect_timeout, max_retries=0).info()
        except AuthorizationException:
            # Authenticated, but without the cluster privilege GET / needs; index operations will say if
            # the index privileges are missing too.
            return client
        except ApiError as e:
            client.close()
            if isinstance(e, UnsupportedProductError | AuthenticationException):
                raise self._translate(e, "connecting") from e
            if e.meta.status >= 500:
                raise StoreConnectionError(
                    f"Elasticsearch at {self.location} is not ready: GET / answered HTTP {e.meta.status} "
                    f"({api_reason(e)})"
                ) from e
            raise StoreConnectionError(
                f"the server at {self.location} does not look like Elasticsearch: GET / answered HTTP "
                f"{e.meta.status} ({api_reason(e)})"
            ) from e
        except TransportError as e:
            client.close()
            raise self._translate(e, "connecting", timeout=s.es_connect_timeout) from e
        version = str(info.get("version", {}).get("number", "")) if isinstance(info.body, dict) else ""
        if not version or not version.split(".")[0].isdigit():
            client.close()
            raise StoreConnectionError(f"the server at {self.location} does not look like Elasticsearch")
        if int(version.split(".")[0]) < 8:
            client.close()
            raise StoreConnectionError(
                f"Elasticsearch at {self.location} is version {version}; esrag needs 8.x or later "
                f"(kNN search)"
            )
        return client

    def close(self) -> None:
        """Close the HTTP connections; a later call reconnects."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- error translation ------------------------------------------------------------------------------

    def _item_error(self, item: dict[str, Any], action: str) -> StoreError:
        """The error for one failed item of a multi-response (``mget`` doc, ``_msearch`` response)."""
        if error_type(item) == "index_not_found_exception":
            return self._missing()
        return StoreError(f"Elasticsearch at {self.location} failed {action}: {error_reason(item)}")

    def _missing(self) -> IndexNotFoundError:
        return IndexNotFoundError(
            f"index '{self.alias}' not found at {self.location}; run `esrag ingest` (or `esrag init`) first"
        )

    def _translate(self, e: Exception, action: str, timeout: float | None = None) -> EsragError:
        """The esrag error for a client/transport exception raised while ``action``."""
        where = f"Elasticsearch at {self.location}"
        if isinstance(e, UnsupportedProductError):
            return StoreConnectionError(f"the server at {self.location} is not Elasticsearch: {e.message}")
        if isinstance(e, AuthenticationException):
            return StoreConnectionError(
                f"authentication failed at {self.location} (HTTP 401) while {action}: check es_api_key or "
                f"es_username/es_password"
            )
        if isinstance(e, AuthorizationException):
            return StoreConnectionError(
                f"not authorized at {self.location} (HTTP 403) while {action} on index '{self.alias}': "
                f"{api_reason(e)}"
            )
        if isinstance(e, ApiError):
            if e.meta.status == 404 and error_type(e.body) == "index_not_found_exception":
                return self._missing()
            return StoreError(
                f"{where} failed {action} on index '{self.alias}' (HTTP {e.meta.status}): "
                f"{api_reason(e)}"
            )
        if isinstance(e, TlsError):
            return StoreConnectionError(
                f"TLS error connecting to {self.location}: {e.message}; check es_ca_certs / es_verify_certs"
            )
        if isinstance(e, ConnectionTimeout):
            secs = timeout if timeout is not None else self.settings.es_timeout
            return StoreConnectionError(f"{where} did not answer within {secs:g} s while {action}")
        if isinstance(e, TransportConnectionError):
            return StoreConnectionError(f"cannot connect to {where} while {action}: {e.message}")
        if isinstance(e, SerializationError):
            return StoreError(f"unexpected response from {self.location} while {action}: {e}")
        return StoreError(f"{where} failed {action} on index '{self.alias}': {e}")

    @contextmanager
    def _api(self, action: str) -> Iterator[None]:
        """Run client calls, turning their exceptions into esrag errors that name ``action``."""
        try:
            yield
        except EsragError:
            raise
        except (ApiError, TransportError) as e:
            raise self._translate(e, action) from e

    # -- index lifecycle --------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """``{"store", "location", "index", "concrete_index"}``; ``concrete_index`` is None until an
        operation has resolved the alias. No I/O."""
        concrete = ",".join(self._concrete) if self._concrete else None
        return {
            "store": self.name, "location": self.location, "index": self.alias, "concrete_index": concrete,
        }

    def _get_index(self) -> dict[str, Any] | None:
        """``GET /<alias>``: concrete index name -> its definition (aliases, mappings, settings), or None
        when neither an alias nor an index has that name."""
        with self._api("reading the index definition"):
            resp = self.client.options(ignore_status=404).indices.get(index=self.alias)
        if resp.meta.status == 404:
            self._concrete = None
            return None
        found = dict(resp.body)
        self._concrete = sorted(found)
        return found

    def _meta_of(self, found: dict[str, Any]) -> IndexMeta:
        """The IndexMeta recorded in the mappings of the index (or every index behind the alias)."""
        metas: dict[str, IndexMeta] = {}
        for name, definition in found.items():
            raw = (definition.get("mappings") or {}).get("_meta") or {}
            if "model" not in raw or "dims" not in raw:
                raise CorruptStoreError(
                    f"index '{name}' at {self.location} is not an esrag index (its mapping has no esrag "
                    f"_meta); choose another index name with --index or delete it"
                )
            try:
                metas[name] = IndexMeta.from_dict(raw)
            except (TypeError, ValueError) as e:
                raise CorruptStoreError(f"index '{name}' at {self.location} has an invalid _meta: {e}") from e
        distinct = {(m.model, m.dims) for m in metas.values()}
        if len(distinct) > 1:
            raise StoreError(
                f"alias '{self.alias}' at {self.location} points to indices built with different models: "
                + ", ".join(f"{n}: {m.model} ({m.dims} dims)" for n, m in sorted(metas.items()))
            )
        return metas[sorted(metas)[-1]]

    def exists(self) -> bool:
        """Whether the alias (or a plain index of that name) exists."""
        with self._api("checking the index"):
            return bool(self.client.indices.exists(index=self.alias))

    def _require_index(self) -> None:
        if not self.exists():
            raise self._missing()

    def read_meta(self) -> IndexMeta | None:
        """The recorded IndexMeta, None when the index does not exist. CorruptStoreError when an index of
        that name exists but was not made by esrag."""
        found = self._get_index()
        return None if found is None else self._meta_of(found)

    def ensure_index(self, meta: IndexMeta) -> bool:
        """Create ``<index>-v1`` with the alias in one request (True), or check the existing index was
        built with ``meta.model`` and ``meta.dims`` (False; ModelMismatchError naming both otherwise)."""
        found = self._get_index()
        if found is None:
            body = q.build_index_body(self.settings, meta)
            with self._api(f"creating index '{self.concrete_name}'"):
                resp = self.client.options(ignore_status=400).indices.create(
                    index=self.concrete_name, aliases={self.alias: {}}, **body
                )
            if resp.meta.status == 200:
                self._concrete = [self.concrete_name]
                return True
            if error_type(resp.body) != "resource_already_exists_exception":
                raise StoreError(
                    f"Elasticsearch at {self.location} refused to create index '{self.concrete_name}': "
                    f"{error_reason(resp.body)}"
                )
            found = self._get_index()  # created concurrently by another process, or an orphan
            if found is None:
                raise StoreError(
                    f"index '{self.concrete_name}' exists at {self.location} but alias '{self.alias}' does "
                    f"not point to it; delete it or add the alias"
                )
        recorded = self._meta_of(found)
        if recorded.model != meta.model or recorded.dims != meta.dims:
            raise ModelMismatchError(
                f"index '{self.alias}' at {self.location} was built with model {recorded.model!r} "
                f"({recorded.dims} dims), but the configured model is {meta.model!r} ({meta.dims} dims); "
                f"use --model {recorded.model!r} or ingest into a new index"
            )
        return False

    def drop(self) -> bool:
        """Delete every concrete index behind the alias (which removes the alias), or the plain index.
        Returns whether anything existed."""
        found = self._get_index()
        if found is None:
            return False
        with self._api("deleting the index"):
            self.client.options(ignore_status=404).indices.delete(index=",".join(sorted(found)))
        self._concrete = None
        return True

    # -- writes -----------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        with self._api("refreshing the index"):
            self.client.indices.refresh(index=self.alias)

    def write(self, chunks: Iterable[EmbeddedChunk]) -> WriteResult:
        """Upsert chunks with ``streaming_bulk`` (streamed: memory holds one bulk request), then refresh.

        Items rejected with 429 or 5xx are retried up to ``BULK_MAX_RETRIES`` times with exponential
        backoff; every item that still fails becomes a WriteError with its source file. Writes go through
        the alias with ``require_alias``, so a vanished index is never auto-created with a wrong mapping.
        Raises StoreError only when the cluster itself fails (unreachable, index missing up front).
        """
        with self._api("checking the index"):
            is_alias = bool(self.client.indices.exists_alias(name=self.alias))
        if not is_alias:
            self._require_index()
        pending: dict[str, list[str]] = {}  # chunk id -> source files of the actions in flight

        def tracked() -> Iterator[dict[str, Any]]:
            for action in q.bulk_actions(self.alias, chunks, require_alias=is_alias):
                pending.setdefault(action["_id"], []).append(action["_source"]["source"])
                yield action

        written, errors = 0, []
        with self._api("writing chunks"):
            for ok, item in helpers.streaming_bulk(
                self.client,
                tracked(),
                chunk_size=BULK_CHUNK_SIZE,
                raise_on_error=False,
                raise_on_exception=False,
                max_retries=BULK_MAX_RETRIES,
                initial_backoff=BULK_INITIAL_BACKOFF_S,
                max_backoff=BULK_MAX_BACKOFF_S,
                **_BULK_RETRY_KW,
            ):
                info = next(iter(item.values()))
                chunk_id = str(info.get("_id", ""))
                sources = pending.get(chunk_id, [])
                source = sources.pop() if sources else ""
                if not sources:
                    pending.pop(chunk_id, None)
                if ok:
                    written += 1
                    continue
                status = info.get("status")
                reason = info.get("error")
                reason = error_reason({"error": reason}) if isinstance(reason, dict) else str(reason)
                code = status if isinstance(status, int) else None
                errors.append(WriteError(chunk_id, source, reason, code))
        if written or errors:
            self._refresh()
        return WriteResult(written=written, errors=tuple(errors))

    def delete_chunks(self, ids: Sequence[str]) -> int:
        """Delete chunks by id (``delete_by_query`` on ``ids``, refreshed); returns how many existed."""
        return self._delete_by(lambda batch: {"ids": {"values": batch}}, ids, ID_BATCH, "deleting chunks")

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete every chunk of the documents (``delete_by_query`` on doc_id, refreshed); returns the
        number of chunks deleted."""
        return self._delete_by(
            lambda batch: {"terms": {"doc_id": batch}}, doc_ids, DOC_ID_BATCH, "deleting documents"
        )

    def _delete_by(self, query: Any, values: Sequence[str], batch_size: int, action: str) -> int:
        unique = list(dict.fromkeys(values))
        if not unique:
            self._require_index()
            return 0
        deleted = 0
        with self._api(action):
            for start in range(0, len(unique), batch_size):
                resp = self.client.delete_by_query(
                    index=self.alias, query=query(unique[start : start + batch_size]), conflicts="proceed",
                    refresh=True,
                )
                if resp.get("failures"):
                    raise StoreError(
                        f"Elasticsearch at {self.location} failed {action} in '{self.alias}': "
                        f"{resp['failures'][0]}"
                    )
                deleted += int(resp.get("deleted", 0))
        return deleted

    # -- reads ------------------------------------------------------------------------------------------

    def list_chunks(self, doc_ids: Sequence[str]) -> dict[str, list[ChunkRef]]:
        """Refs of all stored chunks of ``doc_ids`` (sorted by chunk_index), read in a point in time with
        ``search_after`` pages, so documents with any number of chunks come back whole."""
        unique = list(dict.fromkeys(doc_ids))
        if not unique:
            self._require_index()
            return {}
        refs: dict[str, list[tuple[int, ChunkRef]]] = {}
        with self._api("listing chunks"):
            pit_id = str(self.client.open_point_in_time(index=self.alias, keep_alive=q.PIT_KEEP_ALIVE)["id"])
            try:
                for start in range(0, len(unique), DOC_ID_BATCH):
                    pit_id = self._collect_refs(pit_id, unique[start : start + DOC_ID_BATCH], refs)
            finally:
                self.client.options(ignore_status=(400, 404)).close_point_in_time(id=pit_id)
        return {d: [r for _, r in sorted(items, key=lambda t: (t[0], t[1].id))] for d, items in refs.items()}

    def _collect_refs(
        self, pit_id: str, doc_ids: list[str], refs: dict[str, list[tuple[int, ChunkRef]]]
    ) -> str:
        """Page through one batch of doc ids; returns the (possibly renewed) PIT id."""
        after: list[Any] | None = None
        while True:
            resp = self.client.search(**q.build_refs_page(pit_id, doc_ids, REFS_PAGE, after))
            pit_id = str(resp.get("pit_id", pit_id))
            hits = resp["hits"]["hits"]
            for h in hits:
                src = h.get("_source", {})
                ref = ChunkRef(
                    id=h["_id"], doc_id=str(src.get("doc_id", "")), doc_sha=str(src.get("doc_sha", "")),
                    chunk_sha=str(src.get("chunk_sha", "")), chunk_count=int(src.get("chunk_count", 0)),
                )
                refs.setdefault(ref.doc_id, []).append((int(src.get("chunk_index", 0) or 0), ref))
            if len(hits) < REFS_PAGE:
                return pit_id
            after = hits[-1]["sort"]

    def get_embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by chunk id (float32, shape (dims,)) via ``mget``; ids not found are absent."""
        unique = list(dict.fromkeys(ids))
        if not unique:
            self._require_index()
            return {}
        out: dict[str, np.ndarray] = {}
        with self._api("reading embeddings"):
            for start in range(0, len(unique), ID_BATCH):
                resp = self.client.mget(
                    index=self.alias, ids=unique[start : start + ID_BATCH], source=[q.VECTOR_FIELD]
                )
                for doc in resp["docs"]:
                    if "error" in doc:
                        raise self._item_error(doc, f"reading chunk {doc.get('_id')} of '{self.alias}'")
                    vector = (doc.get("_source") or {}).get(q.VECTOR_FIELD) if doc.get("found") else None
                    if vector is not None:
                        out[doc["_id"]] = np.asarray(vector, dtype=np.float32)
        return out

    def count(self) -> Counts:
        """Chunks (exact) and distinct documents (exact up to 40,000, approximate above; see
        ``es_queries.build_count_body``), in one request."""
        with self._api("counting"):
            resp = self.client.search(index=self.alias, **q.build_count_body())
        total = resp["hits"]["total"]
        chunks = int(total["value"] if isinstance(total, dict) else total)
        return Counts(documents=int(resp["aggregations"]["documents"]["value"]), chunks=chunks)

    # -- search -----------------------------------------------------------------------------------------

    def explain_request(self, request: SearchRequest) -> dict[str, Any]:
        """What ``search`` sends: ``{"method", "path", "body"}`` (the ``_msearch`` header/body pairs,
        vectors included) and ``kibana``, the same as text for Kibana Dev Tools. ES accepts GET and POST
        for ``_msearch``; GET is what its docs and Kibana show. Pure: no I/O."""
        path = f"/{self.alias}/_msearch"
        body = q.build_msearch(self.alias, request)
        return {"method": "GET", "path": path, "body": body, "kibana": q.kibana_request("GET", path, body)}

    def search(self, request: SearchRequest) -> SearchResponse:
        """Both sides in one ``_msearch`` round trip. ``took_ms`` is the server's ``took``. A side that
        fails raises StoreError with ES's reason (IndexNotFoundError when the index is missing)."""
        body = q.build_msearch(self.alias, request)
        if not body:
            self._require_index()
            return SearchResponse(sparse=[], dense=[])
        with self._api("searching"):
            resp = self.client.msearch(index=self.alias, searches=body, filter_path=q.MSEARCH_FILTER_PATH)
        results: list[list[ScoredChunk]] = []
        for r in resp["responses"]:
            if "error" in r:
                raise self._item_error(r, f"searching '{self.alias}' (HTTP {r.get('status', '?')})")
            results.append([_scored(h) for h in r.get("hits", {}).get("hits", [])])
        sparse = results.pop(0) if request.text is not None else []
        dense = results.pop(0) if request.vector is not None else []
        return SearchResponse(sparse=sparse, dense=dense, took_ms=float(resp.get("took", 0.0)))


def _scored(hit: dict[str, Any]) -> ScoredChunk:
    src = hit.get("_source") or {}
    return ScoredChunk(
        id=hit["_id"],
        score=float(hit.get("_score") or 0.0),
        doc_id=str(src.get("doc_id", "")),
        source=str(src.get("source", "")),
        title=str(src.get("title", "")),
        text=str(src.get("text", "")),
        chunk_index=int(src.get("chunk_index", 0) or 0),
        metadata=dict(src.get("metadata") or {}),
    )
