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
- ``iter_chunks`` streams every stored chunk (text, bookkeeping fields and vector) from one consistent
  snapshot: Elasticsearch reads a point in time, SQLite one read transaction on a connection of its own;
  writes made after the stream started are not seen, and memory holds one batch at a time.

Stores that can be rebuilt behind their name (``esrag reindex``) also offer ``versions()``, an
``IndexVersions``: the numbered versions of the index (ES: concrete indices ``<index>-vN`` behind the alias;
SQLite: files ``<index>.vN.db`` behind ``<index>.db``), a store bound to one of them, the atomic swap of
the live one, and the write freeze that keeps an ingest from writing to an index being rebuilt. Those that
can copy their live version into another version of themselves without the chunks passing through the
client (ES: ``POST _reindex``, ``esrag.stores.es_copy``) also offer ``copy_to`` (``CopiesVersions``): the
reindex that keeps the model uses it instead of reading and writing every chunk and vector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
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

    def iter_chunks(self, batch_size: int = 500) -> Iterator[list[EmbeddedChunk]]:
        """Every stored chunk with its text, bookkeeping fields (``doc_sha``, ``chunk_sha``, offsets,
        section, metadata, context) and vector, in batches of at most ``batch_size``, from one snapshot
        taken when the first batch is read (see the module docstring). ``Chunk.context`` is "" for a chunk
        stored before the stores kept it.
        The order is the store's own (stable within one snapshot). IndexNotFoundError when there is no
        index. Closing the iterator early releases the snapshot."""
        ...

    def drop(self) -> bool:
        """Delete the whole index; returns whether it existed."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class IndexVersion:
    """One numbered version of an index (see ``IndexVersions``).

    ``name`` is the concrete index (ES) or the file (SQLite); ``state`` is ``"complete"`` for a version that
    was filled and checked (it may be live, or kept for rollback) or ``"building"`` for one a reindex is
    filling or left half-built when it died."""

    number: int
    name: str
    live: bool
    state: str = "complete"


class IndexVersions(Protocol):
    """The versions of one store's index, for ``esrag reindex`` (``esrag.lifecycle.reindex``) and ``esrag status``.

    Version numbers are integers compared as numbers (``-v10`` is newer than ``-v9``). Thread-safe as far as
    the store is; two reindexes of one index at once are refused by ``freeze``."""

    def listing(self) -> list[IndexVersion]:
        """Every version, oldest first; [] when the index does not exist or is not versioned (an ES index
        that has the alias's own name)."""
        ...

    def token(self, fresh: bool = False) -> str | None:
        """A cheap identity of the version that is live now, to notice a swap: SQLite stats the live file's
        path; ES answers from what this store last saw (its resolved alias, or the ``_index`` of a search's
        hits) and, with ``fresh``, asks the cluster. None when there is no index."""
        ...

    def open(self, number: int, settings: Any) -> Store:
        """A store bound to version ``number`` (created by its ``ensure_index``, in state building), with
        the index settings of ``settings`` (index_options, analyzer...). Reads and writes go to that version
        only, never through the alias."""
        ...

    def freeze(self, purpose: str) -> AbstractContextManager[None]:
        """Refuse writes to the live version while the block runs (an ingest gets ReindexInProgressError),
        so that nothing written meanwhile is missing from the version being built. A second freeze of the
        same index while one is held raises ReindexInProgressError. A process killed inside the block
        leaves the freeze (ES: a write block on the old index) until ``cleanup`` or the next reindex."""
        ...

    def promote(self, number: int) -> None:
        """Mark version ``number`` complete and make it the live one in one atomic step (ES: one
        ``_aliases`` request; SQLite: a rename of the live file's name). Searches never see no index."""
        ...

    def delete(self, number: int) -> None:
        """Delete version ``number`` (never the live one: ConfigError)."""
        ...

    def cleanup(self, force: bool = False) -> list[str]:
        """Delete half-built versions and release a freeze left by a killed reindex; what was done, one
        line each. A freeze whose process still runs (or runs on another host) is a reindex under way:
        ReindexInProgressError, unless ``force`` (``esrag reindex --abort``: the user says it died)."""
        ...


@dataclass(frozen=True)
class CopyResult:
    """What ``CopiesVersions.copy_to`` did: ``copied`` chunks of ``total`` in the live version; ``task`` the
    server's name for the copy; ``recorded`` whether the server kept a record of it (its outcome and
    failures); without one, what the new version holds is the outcome (the reindex checks its counts)."""

    copied: int
    total: int
    task: str
    recorded: bool


@runtime_checkable
class CopiesVersions(Protocol):
    """A store that copies its live version into another version of itself inside the server."""

    def copy_to(self, target: Store, on_progress: Callable[[int, int], None] | None = None,
                poll_s: float = 1.0) -> CopyResult:
        """Copy every chunk of the live version, as stored (vectors, ``ingested_at`` and all), into
        ``target`` (a version from ``versions().open``, created by its ``ensure_index``);
        ``on_progress(done, total)`` at the start, every ``poll_s`` and at the end. StoreError naming both
        indices when the copy fails; the alias is never moved by it."""
        ...
