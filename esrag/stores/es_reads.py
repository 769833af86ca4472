"""The reads of ``ElasticsearchStore`` that scan the index: every hit of a query in a point in time, paged
with ``search_after`` (``list_chunks``, ``list_documents``, ``get_embeddings_by_sha``, ``iter_chunks``), and
the realtime ``mget`` of vectors by id (``get_embeddings``).

``EsReads`` is a mixin of ``ElasticsearchStore``: it uses the store's client, its error translation and
retries, and its bookkeeping of writes not yet refreshed (so that these reads see the store's own writes).
A point in time is always closed, also when the caller stops reading early.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from esrag.stores import es_queries as q
from esrag.stores.es_client import ErrorTranslator
from esrag.types import Chunk, ChunkRef, DocRef, EmbeddedChunk
from esrag.validation import clean_metadata

#: Ids / doc ids per mget or list request, and hits per ``list_chunks``/``list_documents`` page.
ID_BATCH = 1000
DOC_ID_BATCH = 500
REFS_PAGE = 5000
#: Hits per page when the hits carry vectors (``get_embeddings_by_sha``, ``iter_chunks`` pages by its batch).
VECTOR_PAGE = 1000


class EsReads:
    """Scanning reads over ``self.alias`` (see the module docstring); the store provides what is declared
    here."""

    alias: str
    _errors: ErrorTranslator
    _lock: threading.Lock
    _unrefreshed_deletes: set[str]
    _unrefreshed_shas: set[str]

    @property
    def client(self) -> Elasticsearch:
        raise NotImplementedError

    def _api(self, action: str) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _retried(self, action: str, call: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def _require_index(self) -> None:
        raise NotImplementedError

    def _refresh_if(self, doc_ids: Sequence[str] | None) -> None:
        raise NotImplementedError

    def refresh(self) -> None:
        raise NotImplementedError

    def _resolve_write_target(self) -> tuple[str, bool]:
        raise NotImplementedError


    def _pit_pages(self, query: dict[str, Any], fields: Sequence[str], action: str,
                   page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Every hit of ``query`` (its ``_id`` and ``_source`` ``fields``), read in a point in time with
        ``search_after`` pages of ``page_size`` (default ``REFS_PAGE``): complete however many chunks match."""
        size = page_size or REFS_PAGE
        with self._api(action):
            pit_id = str(self._retried(action, lambda: self.client.open_point_in_time(
                index=self.alias, keep_alive=q.PIT_KEEP_ALIVE))["id"])
            try:
                after: list[Any] | None = None
                while True:
                    page = q.build_pit_page(pit_id, query, fields, size, after)
                    resp = self._retried(action, functools.partial(self.client.search, **page))
                    pit_id = str(resp.get("pit_id", pit_id))
                    hits = resp["hits"]["hits"]
                    yield from hits
                    if len(hits) < size:
                        return
                    after = hits[-1]["sort"]
            finally:
                self.client.options(ignore_status=(400, 404)).close_point_in_time(id=pit_id)

    def list_chunks(self, doc_ids: Sequence[str]) -> dict[str, list[ChunkRef]]:
        """Refs of all stored chunks of ``doc_ids`` (sorted by chunk_index), complete for documents with any
        number of chunks. Sees this store's own writes: refreshes first only when one of ``doc_ids`` was
        written since the last refresh, and leaves out chunks it deleted since then."""
        unique = list(dict.fromkeys(doc_ids))
        if not unique:
            self._require_index()
            return {}
        self._refresh_if(unique)
        with self._lock:
            gone = set(self._unrefreshed_deletes)
        refs: dict[str, list[tuple[int, ChunkRef]]] = {}
        for start in range(0, len(unique), DOC_ID_BATCH):
            query = q.build_refs_query(unique[start : start + DOC_ID_BATCH])
            for h in self._pit_pages(query, q.REF_FIELDS, "listing chunks"):
                if h["_id"] in gone:
                    continue
                src = h.get("_source", {})
                ref = ChunkRef(
                    id=h["_id"], doc_id=str(src.get("doc_id", "")), doc_sha=str(src.get("doc_sha", "")),
                    chunk_sha=str(src.get("chunk_sha", "")), chunk_count=int(src.get("chunk_count", 0)),
                )
                refs.setdefault(ref.doc_id, []).append((int(src.get("chunk_index", 0) or 0), ref))
        return {d: [r for _, r in sorted(items, key=lambda t: (t[0], t[1].id))] for d, items in refs.items()}

    def list_documents(self, prefix: str = "") -> dict[str, DocRef]:
        """Every stored document whose doc_id starts with ``prefix``: doc_id -> DocRef (its doc_sha and
        number of stored chunks). A document whose chunks carry more than one doc_sha (an interrupted
        re-write) reports doc_sha "", which matches no version, so an ingest writes it again.

        Reads every matching chunk's doc_id and doc_sha in PIT pages (no aggregation: its bucket limit would
        cap the answer); refreshes first if this store wrote anything since the last refresh."""
        self._require_index()
        self._refresh_if(None)
        shas: dict[str, set[str]] = {}
        counts: dict[str, int] = {}
        for h in self._pit_pages(q.build_prefix_query(prefix), ("doc_id", "doc_sha"), "listing documents"):
            src = h.get("_source", {})
            doc_id = str(src.get("doc_id", ""))
            shas.setdefault(doc_id, set()).add(str(src.get("doc_sha", "")))
            counts[doc_id] = counts.get(doc_id, 0) + 1
        return {
            d: DocRef(doc_id=d, doc_sha=next(iter(s)) if len(s) == 1 else "", chunks=counts[d])
            for d, s in shas.items()
        }

    def get_embeddings_by_sha(self, chunk_shas: Sequence[str]) -> dict[str, np.ndarray]:
        """One stored vector (float32, shape (dims,)) per given ``chunk_sha`` found in any document; shas
        not found are absent. A ``terms`` query on ``chunk_sha`` read in PIT pages (``VECTOR_PAGE`` hits,
        vectors are large); the first chunk of each sha wins (equal text has one vector under one model).
        Refreshes first only when one of the shas was written by this store since the last refresh."""
        unique = list(dict.fromkeys(chunk_shas))
        if not unique:
            self._require_index()
            return {}
        with self._lock:
            stale = not self._unrefreshed_shas.isdisjoint(unique)
        if stale:
            self.refresh()
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(unique), DOC_ID_BATCH):
            query = {"bool": {"filter": [{"terms": {"chunk_sha": unique[start : start + DOC_ID_BATCH]}}]}}
            fields = ("chunk_sha", q.VECTOR_FIELD)
            for h in self._pit_pages(query, fields, "reading embeddings by content", VECTOR_PAGE):
                src = h.get("_source") or {}
                sha, vector = src.get("chunk_sha"), src.get(q.VECTOR_FIELD)
                if isinstance(sha, str) and vector is not None and sha not in out:
                    out[sha] = np.asarray(vector, dtype=np.float32)
        return out

    def get_embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by chunk id (float32, shape (dims,)) via realtime ``mget``; ids not found are
        absent. An alias over several indices is an error (``mget`` would read one of them silently)."""
        unique = list(dict.fromkeys(ids))
        target, _ = self._resolve_write_target()
        if not unique:
            return {}
        out: dict[str, np.ndarray] = {}
        with self._api("reading embeddings"):
            for start in range(0, len(unique), ID_BATCH):
                batch = unique[start : start + ID_BATCH]
                resp = self._retried("reading embeddings", functools.partial(
                    self.client.mget, index=target, ids=batch, source=[q.VECTOR_FIELD]))
                for doc in resp["docs"]:
                    if "error" in doc:
                        raise self._errors.item(doc, f"reading chunk {doc.get('_id')} of '{self.alias}'")
                    vector = (doc.get("_source") or {}).get(q.VECTOR_FIELD) if doc.get("found") else None
                    if vector is not None:
                        out[doc["_id"]] = np.asarray(vector, dtype=np.float32)
        return out

    def iter_chunks(self, batch_size: int = 500) -> Iterator[list[EmbeddedChunk]]:
        """Every chunk with its vector, read in one point in time (``_pit_pages``, ``batch_size`` hits a
        page, the order of ``_shard_doc``): the index as it was when the first page was asked for."""
        self._require_index()
        batch: list[EmbeddedChunk] = []
        for h in self._pit_pages({"match_all": {}}, q.STORED_FIELDS, "reading the stored chunks",
                                 max(1, batch_size)):
            batch.append(_stored(h))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _stored(hit: dict[str, Any]) -> EmbeddedChunk:
    """A stored chunk read back (``iter_chunks``): the hit's ``_source`` as a Chunk and its vector."""
    src = hit.get("_source") or {}
    chunk = Chunk(
        id=hit["_id"], doc_id=str(src.get("doc_id", "")), source=str(src.get("source", "")),
        title=str(src.get("title", "")), text=str(src.get("text", "")), context=str(src.get("context") or ""),
        chunk_index=int(src.get("chunk_index", 0) or 0), chunk_count=int(src.get("chunk_count", 0) or 0),
        start=int(src.get("start", 0) or 0), end=int(src.get("end", 0) or 0),
        chunk_sha=str(src.get("chunk_sha", "")), doc_sha=str(src.get("doc_sha", "")),
        metadata=clean_metadata(src.get("metadata")), section=int(src.get("section", -1)),
    )
    return EmbeddedChunk(chunk, np.asarray(src.get(q.VECTOR_FIELD) or [], dtype=np.float32))
