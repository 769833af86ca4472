"""ElasticsearchStore: the Store protocol over an Elasticsearch 8.x cluster (or an ES-compatible server).

Users address the alias ``settings.index``; ``ensure_index`` creates the concrete index ``<index>-v1`` behind
it, so that ``esrag reindex`` can fill a new concrete index ``<index>-vN`` and swap the alias atomically
(``es_versions``; ``bound`` makes a store that reads and writes one version, not through the alias). A
plain index that already carries the alias's name is used as is, provided it was created by esrag (has
esrag ``_meta``); it cannot be reindexed behind its own name.

A search notices a swap from its own answer: every hit names its concrete index (``_index``), and one
that is not the version this store resolved is recorded (``served_index``), so the engine can load the
new version's model and search again, without a request of its own per search.

The scanning reads (point-in-time pages: ``list_chunks``, ``list_documents``, ``get_embeddings_by_sha``,
``iter_chunks``; and ``get_embeddings``) are the mixin ``esrag.stores.es_reads.EsReads``.

Request bodies come from the pure builders in ``esrag.stores.es_queries``; this module only runs them and
turns every client or transport exception into an ``esrag.errors.StoreError`` subclass whose message names
the URL and the index. The client is created on first use, not in the constructor, and that first use
checks the server with a short timeout (``es_connect_timeout``) so a wrong URL fails in seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch

from esrag.config import Settings
from esrag.errors import (
    BulkWriteError,
    ConfigError,
    CorruptStoreError,
    EsragError,
    IndexNotFoundError,
    ModelMismatchError,
    ReindexInProgressError,
    StoreError,
    setting,
)
from esrag.redact import redact_url
from esrag.stores import es_copy, es_versions
from esrag.stores import es_queries as q
from esrag.stores.base import CopyResult, Store
from esrag.stores.es_bulk import BulkStats, BulkWriter
from esrag.stores.es_client import (
    DEFAULT_RETRY_SECONDS,
    ErrorTranslator,
    RetryPolicy,
    check_server,
    error_reason,
    error_type,
    is_retryable,
    make_client,
    resolve_connection,
    retry_after_s,
)
from esrag.stores.es_reads import EsReads
from esrag.types import (
    Counts,
    EmbeddedChunk,
    IndexMeta,
    ScoredChunk,
    SearchRequest,
    SearchResponse,
    WriteResult,
)
from esrag.validation import clean_metadata

__all__ = ["ElasticsearchStore", "redact_url"]
log = logging.getLogger(__name__)

#: Suffix of the concrete index created behind the alias.
CONCRETE_SUFFIX = "-v1"
#: Doc ids per ``delete_by_query`` request.
DOC_ID_BATCH = 500


class ElasticsearchStore(EsReads):
    """Chunks in one Elasticsearch index (see the module docstring for the alias scheme).

    Thread-safe: the underlying client is, the lazy connection is made under a lock, and the bookkeeping
    of writes not yet refreshed is guarded by the same lock.
    """

    name = "elasticsearch"

    def __init__(self, settings: Settings) -> None:
        """Remember the settings; no I/O. Raises ConfigError when ``settings.es_url`` is not set or is not
        an http(s) URL. Credentials in the URL are taken out of it here (see ``es_client``)."""
        self.settings = settings
        self._conn = resolve_connection(settings)
        self.url = self._conn.url
        self.location = self._conn.location
        self.alias = settings.index
        self.concrete_name = f"{settings.index}{CONCRETE_SUFFIX}"
        self._errors = ErrorTranslator(settings, self.location, self.alias)
        budget = float(getattr(settings, "es_retry_seconds", DEFAULT_RETRY_SECONDS))
        self.retry = RetryPolicy(budget_s=budget)  # bulk writes
        self._read_retry = RetryPolicy(budget_s=budget)  # the reads of the ingest path
        self.bulk_stats = BulkStats()
        self._client: Elasticsearch | None = None
        self._lock = threading.Lock()
        self._concrete: list[str] | None = None
        self._write_target: tuple[str, bool] | None = None  # (name to write to, is an alias)
        self._unrefreshed_docs: set[str] = set()  # doc ids written since the last refresh
        self._unrefreshed_deletes: set[str] = set()  # chunk ids deleted since the last refresh
        self._unrefreshed_shas: set[str] = set()  # chunk_shas written since the last refresh
        self._bound = False  # reads and writes one concrete version, not through the alias
        self._seen: str | None = None  # a concrete index a search answered from that is not _concrete

    @classmethod
    def bound(cls, settings: Settings, concrete: str) -> ElasticsearchStore:
        """A store over the concrete index ``concrete`` itself (a version being built by a reindex): its
        ``ensure_index`` creates that index without the alias, in state building (``es_versions``)."""
        store = cls(settings)
        store.alias = store.concrete_name = concrete
        store._errors = ErrorTranslator(settings, store.location, concrete)
        store._bound = True
        return store

    def versions(self) -> es_versions.EsVersions:
        """The versions of this index behind its alias (``esrag reindex``, ``esrag status``)."""
        return es_versions.EsVersions(self)

    def copy_to(self, target: Store, on_progress: Callable[[int, int], None] | None = None,
                poll_s: float = es_copy.POLL_S) -> CopyResult:
        """Copy the live version into ``target``, another version of this index on the same server, with
        one ``POST _reindex`` (``CopiesVersions``; ``esrag.stores.es_copy``)."""
        if not isinstance(target, ElasticsearchStore) or target.url != self.url:
            raise ConfigError(f"a copy inside Elasticsearch at {self.location} needs a version on the same "
                              f"server, not {target!r}")
        found = self._get_index()
        if found is None:
            raise self._missing()
        if len(found) != 1:
            raise StoreError(f"alias '{self.alias}' at {self.location} points at {len(found)} indices "
                             f"({', '.join(sorted(found))}); a copy needs exactly one live version")
        total = self.count().chunks
        return es_copy.ServerCopy(self, next(iter(found)), target, on_progress, poll_s).run(total)

    def served_index(self) -> str | None:
        """The concrete index (comma-joined, if several) that answers for the alias as last seen: resolved
        by ``read_meta``, or named by the hits of a later search. None before either. No I/O."""
        return self._seen or (",".join(self._concrete) if self._concrete else None)

    def forget_alias(self) -> None:
        """Resolve the alias again on next use (after this process moved it)."""
        with self._lock:
            self._concrete = self._write_target = self._seen = None

    def __repr__(self) -> str:
        return f"ElasticsearchStore({self.location!r}, index={self.alias!r})"

    # -- connection -------------------------------------------------------------------------------------

    @property
    def client(self) -> Elasticsearch:
        """The connected client, created and checked (``GET /`` with ``es_connect_timeout``) on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    client = make_client(self.settings, self._conn)
                    check_server(client, self.settings, self._errors)
                    self._client = client
        return self._client

    def close(self) -> None:
        """Refresh once if this store wrote anything not yet refreshed (so that what it wrote is searchable
        when it is done, whoever forgot to call ``refresh``), then close the HTTP connections; a later call
        reconnects. A failing refresh is logged, not raised: closing must not fail."""
        with self._lock:
            dirty = self._client is not None and bool(self._unrefreshed_docs or self._unrefreshed_deletes)
        if dirty:
            try:
                self.refresh()
            except EsragError as e:
                log.warning("%s", e)
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- error translation ------------------------------------------------------------------------------

    def _missing(self) -> IndexNotFoundError:
        return self._errors.missing()

    def _translate(self, e: Exception, action: str, timeout: float | None = None) -> EsragError:
        if isinstance(e, ApiError) and "index write (api)" in str(e.body):
            return self._frozen(action)
        return self._errors.translate(e, action, timeout)

    def _frozen(self, action: str) -> ReindexInProgressError:
        return ReindexInProgressError(
            f"index '{self.alias}' at {self.location} is being rebuilt by `esrag reindex`: its writes are "
            f"refused ({action}); write again once the new version is live, or run `esrag reindex --abort` "
            f"if that reindex died")

    @contextmanager
    def _api(self, action: str) -> Iterator[None]:
        """Run client calls, turning their exceptions into esrag errors that name ``action``."""
        try:
            yield
        except EsragError:
            raise
        except (ApiError, TransportError) as e:
            raise self._translate(e, action) from e

    def _retried(self, action: str, call: Callable[[], Any]) -> Any:
        """``call()`` for the reads and refreshes of the ingest path, retried like bulk writes (429/5xx
        gateway errors, connection errors, timeouts; backoff within ``es_retry_seconds``), so that
        back-pressure slows an ingest down instead of failing it. User-facing searches are not retried."""
        attempt = 0
        while True:
            try:
                result = call()
            except (ApiError, TransportError) as e:
                if not is_retryable(e):
                    raise self._translate(e, action) from e
                waited = self._read_retry.wait(attempt, retry_after_s(e) if isinstance(e, ApiError) else None)
                if waited is None:
                    raise self._translate(e, action) from e
                log.warning("Elasticsearch at %s: %s while %s; retrying in %.1f s", self.location,
                            self._errors.reason(e), action, waited)
                attempt += 1
                continue
            self._read_retry.progress()
            return result

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
        self._seen = None
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
            if "analyzer" not in raw:  # made before esrag recorded it: what the text field says
                text_field = ((definition.get("mappings") or {}).get("properties") or {}).get("text") or {}
                raw = {**raw, "analyzer": text_field.get("analyzer", "standard")}
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
            aliases: dict[str, Any] = {self.alias: {}}
            if self._bound:
                aliases = {}
                body["mappings"]["_meta"][es_versions.BUILD_KEY] = es_versions.BUILDING
            with self._api(f"creating index '{self.concrete_name}'"):
                resp = self.client.options(ignore_status=400).indices.create(
                    index=self.concrete_name, aliases=aliases, **body
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
            raise ModelMismatchError.of(f"'{self.alias}' at {self.location}", recorded.model, recorded.dims,
                                        meta.model, meta.dims)
        if recorded.analyzer != meta.analyzer:
            raise ConfigError(
                f"index '{self.alias}' at {self.location} analyses text with {recorded.analyzer!r}, not "
                f"{meta.analyzer!r}: an Elasticsearch index cannot change its analyzer; set {setting('analyzer')} "
                f"to {recorded.analyzer!r} or ingest into a new index ({setting('index')})")
        for name, definition in sorted(found.items()):  # made before a field existed: add it (old chunks lack it)
            have = (definition.get("mappings") or {}).get("properties") or {}
            missing = {f: m for f, m in q.LATER_FIELDS.items() if f not in have}
            if missing:
                with self._api(f"adding the field(s) {', '.join(missing)} to the mapping of '{name}'"):
                    self.client.indices.put_mapping(index=name, properties=missing)
        if recorded.build_params() != meta.build_params():
            new_meta = {**recorded.to_dict(), **meta.build_params(), "similarity": recorded.similarity}
            with self._api("recording the index's settings"):
                self.client.indices.put_mapping(index=",".join(sorted(found)), meta=new_meta)
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
        self._write_target = None
        return True

    # -- writes -----------------------------------------------------------------------------------------

    def _resolve_write_target(self) -> tuple[str, bool]:
        """``(name, is_alias)`` to write to and read vectors from, resolved once per store (and again after
        ``drop``). An alias that points at several indices is an error naming the alias and every index:
        ES would refuse the writes item by item, and ``mget`` would silently read from one of them."""
        target = self._write_target
        if target is not None:
            return target
        with self._api("resolving the index alias"):
            resp = self.client.options(ignore_status=404).indices.get_alias(name=self.alias)
        if resp.meta.status == 200 and isinstance(resp.body, dict) and resp.body:
            indices = sorted(resp.body)
            if len(indices) > 1:
                raise StoreError(
                    f"alias '{self.alias}' at {self.location} points at {len(indices)} indices "
                    f"({', '.join(indices)}); esrag writes to and reads vectors from exactly one: remove the "
                    f"alias from all but one of them"
                )
            target = (self.alias, True)
        else:
            self._require_index()
            target = (self.alias, False)
        self._write_target = target
        return target

    def write(self, chunks: Iterable[EmbeddedChunk], delete_ids: Sequence[str] = ()) -> WriteResult:
        """Upsert ``chunks``, then delete the chunks ``delete_ids``, in one ``_bulk`` stream (see
        ``es_bulk``): streamed, retried with backoff on back-pressure and connection errors within
        ``es_retry_seconds``, never refreshed (``refresh()`` does that once).

        Every chunk not written comes back as a WriteError with its source file and reason. Writes go
        through the alias with ``require_alias``, so a vanished index is never auto-created with a wrong
        mapping. Raises StoreError only when the store is unusable: index missing, credentials refused, an
        alias over several indices.
        """
        target, is_alias = self._resolve_write_target()
        doc_ids: set[str] = set()
        shas: set[str] = set()

        def noted() -> Iterator[EmbeddedChunk]:
            for ec in chunks:
                doc_ids.add(ec.chunk.doc_id)
                shas.add(ec.chunk.chunk_sha)
                yield ec

        writer = BulkWriter(self.client, self._errors, self.retry, self.bulk_stats, self.settings.es_timeout)
        try:
            result = writer.run(target, noted(), delete_ids, require_alias=is_alias)
            if any("index write (api)" in e.reason for e in result.errors):
                raise self._frozen("writing chunks")
            return result
        finally:
            with self._lock:
                self._unrefreshed_docs |= doc_ids
                self._unrefreshed_shas |= shas
                self._unrefreshed_deletes.update(delete_ids)

    def refresh(self) -> None:
        """One refresh of the index: every completed write becomes visible to ``search`` and ``count``."""
        self._retried("refreshing the index", lambda: self.client.indices.refresh(index=self.alias))
        with self._lock:
            self._unrefreshed_docs.clear()
            self._unrefreshed_shas.clear()
            self._unrefreshed_deletes.clear()

    def _refresh_if(self, doc_ids: Iterable[str] | None) -> None:
        """Refresh when a search is about to read documents written since the last refresh (``None``: any
        document), so that ``list_chunks`` and ``list_documents`` see this store's own writes."""
        with self._lock:
            stale = bool(self._unrefreshed_docs or self._unrefreshed_deletes) if doc_ids is None else (
                not self._unrefreshed_docs.isdisjoint(doc_ids))
        if stale:
            self.refresh()

    def delete_chunks(self, ids: Sequence[str]) -> int:
        """Delete chunks by id (bulk ``delete`` actions, retried like writes; like writes, not refreshed:
        ``get_embeddings`` and ``list_chunks`` no longer see them at once, ``search`` and ``count`` after
        ``refresh()``); returns how many existed. Raises BulkWriteError when some deletes failed."""
        unique = list(dict.fromkeys(ids))
        result = self.write((), delete_ids=unique)
        if result.errors:
            raise BulkWriteError(
                f"Elasticsearch at {self.location} failed to delete {len(result.errors)} of {len(unique)} "
                f"chunks in '{self.alias}': {result.errors[0].reason}", result.errors
            )
        return result.deleted

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete every chunk of the documents (``delete_by_query`` on doc_id, refreshed, so a search right
        after it no longer finds them); returns the number of chunks deleted."""
        unique = list(dict.fromkeys(doc_ids))
        if not unique:
            self._require_index()
            return 0
        self._refresh_if(unique)
        action = "deleting documents"
        deleted = 0
        with self._api(action):
            for start in range(0, len(unique), DOC_ID_BATCH):
                resp = self.client.delete_by_query(
                    index=self.alias, query={"terms": {"doc_id": unique[start : start + DOC_ID_BATCH]}},
                    conflicts="proceed", refresh=True,
                )
                if resp.get("failures") and "index write (api)" in str(resp["failures"][0]):
                    raise self._frozen(action)
                if resp.get("failures"):
                    raise StoreError(
                        f"Elasticsearch at {self.location} failed {action} in '{self.alias}': "
                        f"{self._errors.clean(str(resp['failures'][0]))}"
                    )
                deleted += int(resp.get("deleted", 0))
        return deleted

    # -- reads (the scans are es_reads.EsReads) ---------------------------------------------------------

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
        """Both sides in one ``_msearch`` round trip. ``took_ms`` is the server's ``took``.

        Failures raise StoreError naming the URL and the side: a side answered with an error names that side
        (``the BM25 side`` / ``the kNN side``) with ES's reason (IndexNotFoundError when the index is
        missing); a request that fails whole (HTTP 429/5xx, a reset, no answer within ``es_timeout``) names
        both. Searches are not retried: a user waiting on a query gets an answer or an error promptly."""
        body = q.build_msearch(self.alias, request)
        if not body:
            self._require_index()
            return SearchResponse(bm25=[], dense=[])
        sides = [s for s, on in (("BM25", request.text is not None), ("kNN", request.vector is not None)) if on]
        with self._api(f"searching (the {' and '.join(sides)} side{'s' if len(sides) > 1 else ''})"):
            resp = self.client.msearch(index=self.alias, searches=body, filter_path=q.MSEARCH_FILTER_PATH)
        results: list[list[ScoredChunk]] = []
        for side, r in zip(sides, resp["responses"], strict=False):
            if "error" in r:
                raise self._errors.item(
                    r, f"searching '{self.alias}': the {side} side failed (HTTP {r.get('status', '?')})"
                )
            hits = r.get("hits", {}).get("hits", [])
            self._note_served(hits)
            results.append([_scored(h) for h in hits])
        if len(results) != len(sides):
            raise StoreError(f"Elasticsearch at {self.location} answered {len(results)} of {len(sides)} searches")
        bm25 = results.pop(0) if request.text is not None else []
        dense = results.pop(0) if request.vector is not None else []
        return SearchResponse(bm25=bm25, dense=dense, took_ms=float(resp.get("took", 0.0)))


    def _note_served(self, hits: list[dict[str, Any]]) -> None:
        """Record a concrete index the hits came from that is not the resolved one (the alias moved)."""
        known = self._concrete
        if known and not self._bound:
            other = next((str(h["_index"]) for h in hits if h.get("_index") and h["_index"] not in known), None)
            if other is not None:
                self._seen = other


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
        metadata=clean_metadata(src.get("metadata")),
        section=int(src.get("section", -1)),
    )
