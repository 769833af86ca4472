"""The Store protocol: what ingest and search need from a place that holds chunks.

A store holds one index (named by ``Settings.index``) of chunks, each with BM25-searchable text (title and
text) and one dense vector. Contract, checked by ``tests/integration/test_store_contract.py`` against every
store:

- ``ensure_index(meta)`` creates the index when missing and records ``meta``; when it exists with another
  model or dims it raises ``ModelMismatchError`` naming both. Idempotent.
- Writes are upserts by chunk id: writing the same chunk twice leaves one copy.
- ``search`` returns at most ``request.candidates`` hits per side, best first, with filters applied on both
  sides *before* the top-k cut (so a filtered kNN still returns up to ``candidates`` hits). Dense scores
  follow Elasticsearch's cosine convention ``(1 + cos) / 2``, in [0, 1]. BM25 scores are the store's own.
- Every method other than ``ensure_index``/``exists``/``describe``/``drop`` raises ``IndexNotFoundError``
  when the index does not exist.
- ``list_chunks``, ``get_embeddings``, ``get_embeddings_by_sha`` and ``list_documents`` see every completed
  write at once (ES reads them with realtime gets or a refresh of its own). ``search`` and ``count`` may lag
  until ``refresh()``: an ingest refreshes once at its end, not after every batch.
- Constructing a store performs no I/O; the first operation connects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from esrag.types import ChunkRef, Counts, DocRef, EmbeddedChunk, IndexMeta, SearchRequest, SearchResponse, WriteResult


@runtime_checkable
class Store(Protocol):
    #: registered plugin name ("elasticsearch", "sqlite")
    name: str

    def describe(self) -> dict[str, Any]:
        """Where the data lives, for ``esrag status``: ``{"store": name, "location": url-or-path,
        "index": index-name, ...}``. No I/O."""
        ...

    def exists(self) -> bool:
        """Whether the index exists."""
        ...

    def ensure_index(self, meta: IndexMeta) -> bool:
        """Create the index if missing (returns True) or check it matches ``meta`` (returns False)."""
        ...

    def read_meta(self) -> IndexMeta | None:
        """The recorded IndexMeta, or None when the index does not exist."""
        ...

    def write(self, chunks: Iterable[EmbeddedChunk], delete_ids: Sequence[str] = ()) -> WriteResult:
        """Upsert ``chunks``, then delete the chunks whose ids are in ``delete_ids``, in one request stream
        where the store allows it (ES: index and delete actions in the same ``_bulk`` stream; SQLite: one
        transaction). Never raises for individual failed items: they are returned in
        ``WriteResult.errors`` with their source file; ``WriteResult.deleted`` counts deletions of chunks
        that existed. Raises StoreError only if the store is unusable."""
        ...

    def refresh(self) -> None:
        """Make every completed write visible to ``search`` and ``count`` (ES: one refresh of the index;
        a no-op where writes are visible at once)."""
        ...

    def list_documents(self, prefix: str = "") -> dict[str, DocRef]:
        """Every stored document whose doc_id starts with ``prefix`` ("" = all): doc_id -> DocRef. Used by
        ``ingest --prune`` to find documents that are gone from the corpus, and by ingest to skip unchanged
        documents without chunking them.

        ``DocRef.chunks`` counts the document's stored chunks (any version). ``DocRef.doc_sha`` is their
        version hash, or "" when they carry more than one (an interrupted re-write)."""
        ...

    def list_chunks(self, doc_ids: Sequence[str]) -> dict[str, list[ChunkRef]]:
        """For each given doc id that has chunks, the refs of all its stored chunks (any version)."""
        ...

    def get_embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by chunk id (float32, shape (dims,)); ids not found are absent."""
        ...

    def get_embeddings_by_sha(self, chunk_shas: Sequence[str]) -> dict[str, np.ndarray]:
        """A stored vector (float32, shape (dims,)) for each given ``chunk_sha`` that any chunk of the index
        has, whatever its document: ingest reuses it for the same text in a moved, renamed or edited
        document instead of embedding it again. Shas not found are absent. (ES: a ``terms`` query on
        ``chunk_sha`` returning ``embedding``, collapsed on ``chunk_sha``; any one chunk per sha will do,
        since equal text under one model has one vector.)"""
        ...

    def delete_chunks(self, ids: Sequence[str]) -> int:
        """Delete chunks by id; returns how many existed."""
        ...

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete every chunk of the given documents; returns the number of chunks deleted."""
        ...

    def search(self, request: SearchRequest) -> SearchResponse:
        """Run the BM25 side (if ``request.text``) and the kNN side (if ``request.vector``), in one round
        trip where the store allows it."""
        ...

    def explain_request(self, request: SearchRequest) -> Any:
        """The exact native request ``search`` would send (ES: the ``_msearch`` bodies; SQLite: the SQL),
        for ``--explain``. Pure: no I/O."""
        ...

    def count(self) -> Counts:
        """Distinct documents and chunks in the index."""
        ...

    def drop(self) -> bool:
        """Delete the whole index; returns whether it existed."""
        ...

    def close(self) -> None: ...
