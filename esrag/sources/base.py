"""The Source contract: where the documents of an ingest come from, and which stored documents are theirs.

An ingest (``esrag.ingest.pipeline.Ingestor``) runs plan -> embed -> write -> prune over one source. The source
yields documents with stable ids; the ingestor skips the unchanged ones, embeds and writes the rest, and,
with ``prune``, deletes what the source no longer has. Everything that depends on where documents come
from (files on disk, records of an Elasticsearch index, documents an API caller sent) lives in the source:

- **Ids.** ``doc_id`` is stable across runs and unique within the source; two sources of one index use
  disjoint id spaces (files: relative paths; an Elasticsearch index ``NAME``: ``es:NAME/<record id>``), so
  documents of different sources coexist in one esrag index.
- **Prune scope.** ``scopes()`` are the doc-id prefixes under which stored documents may be this source's,
  and ``owns(doc_id)`` says which of them are. A prune of one source never looks outside its own scope, so
  it never removes what another source wrote.
- **Replacement rule.** ``superseded(doc_id)``: whether a stored document of this source that the run did
  not produce is an earlier form of one it did (the old segments of a streamed text file): such documents
  are deleted with or without ``prune``, as the stale chunks of an edited document are.
- **Gone.** ``gone(doc_ids)``: of this source's stored documents that the run did not produce, those that
  are gone from the source. Usually all of them; a source that read only part of itself (one slice of an
  Elasticsearch index) checks them against the source instead.
- **Cheap change detection (optional).** ``items()`` may yield a ``Stub`` (an id and a ``version`` that
  changes whenever the content does) instead of a ``Document``: the ingestor compares the version with the
  stored one and asks ``fetch`` only for the stubs that changed, so an unchanged re-run never reads their
  content. ``fetch`` returns Documents carrying the same ``version``.

Errors that make the whole run pointless (a missing path, a missing source index, no read privilege) are
raised by ``start()``, before anything is written. A single unreadable document is a ``Skipped`` item and
the run goes on. A source is used by one ingest at a time, from the ingest's loading thread (``start``,
``items``, ``fetch``) and then the calling thread (``gone``, ``close``): it need not be thread-safe.

Sources are plugins of the ``esrag.sources`` entry-point group (``esrag.plugins``): a callable
``(settings, **options) -> Source``. Built-ins: ``files`` (``esrag.sources.files``) and ``elasticsearch``
(``esrag.sources.elasticsearch``). ``esrag.sources.documents.DocumentsSource`` wraps documents already in
memory (the HTTP API, evaluation corpora).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from esrag.sources.loaders import Notice, Skipped
from esrag.types import Document


@dataclass(frozen=True)
class Stub:
    """A document known only by its id and version (the content is read by ``Source.fetch`` if needed).

    ``version`` changes whenever the document's content would ("" for unknown: the document is always
    fetched, and then compared by content); ``ref`` is the source's own handle for fetching it."""

    doc_id: str
    version: str
    ref: Any = None


@dataclass(frozen=True)
class Progress:
    """How far the source has read: ``done`` units (files, records) of ``total`` (0: not known)."""

    done: int
    total: int = 0


#: what ``Source.items`` yields
Item = Document | Stub | Skipped | Notice | Progress


@runtime_checkable
class Source(Protocol):
    #: registered plugin name ("files", "elasticsearch"; "documents" for documents given in memory)
    name: str
    #: what one unit of progress is, for the progress bar ("file", "record")
    unit: str

    def describe(self) -> dict[str, Any]:
        """Where the documents come from, for the report: ``{"source": name, ...}``. No secret, no I/O."""
        ...

    def start(self) -> int | None:
        """Check the source and return how many units it will read (None: unknown; 0: nothing). Raises an
        EsragError naming what is wrong (a missing path or index, no privilege) before anything is written."""
        ...

    def items(self) -> Iterator[Item]:
        """The documents (or stubs), with the Skipped and Notice items met on the way and Progress marks.
        Each doc_id at most once."""
        ...

    def fetch(self, stubs: Sequence[Stub]) -> Iterator[Document | Skipped]:
        """The documents of ``stubs`` that changed (with their ``version``); a stub whose record is gone
        meanwhile yields nothing. Only called for sources that yield stubs."""
        ...

    def scopes(self) -> list[str]:
        """Doc-id prefixes under which stored documents may be this source's ("" would be every document:
        no built-in source uses it)."""
        ...

    def owns(self, doc_id: str) -> bool:
        """Whether a stored document found under ``scopes()`` is this source's to prune."""
        ...

    def superseded(self, doc_id: str) -> bool:
        """After a complete read: whether the stored ``doc_id`` (this source's, not produced by the run) is
        an earlier form of a document the run produced, to delete with or without ``prune``."""
        ...

    def gone(self, doc_ids: Sequence[str]) -> list[str]:
        """Of ``doc_ids`` (this source's stored documents the run did not produce, none superseded), those
        gone from the source: ``prune`` deletes them, and the report counts them."""
        ...

    def close(self) -> None:
        """Release connections and files. Idempotent."""
        ...


class BaseSource:
    """Defaults for a Source: no stubs, no replacement rule, everything not produced is gone, nothing to
    close. A plugin sets ``name`` and ``unit`` and implements ``describe``, ``start``, ``items``,
    ``scopes`` and ``owns``."""

    name = "source"
    unit = "document"

    def fetch(self, stubs: Sequence[Stub]) -> Iterator[Document | Skipped]:
        raise NotImplementedError(f"the {self.name} source yields no stubs")

    def superseded(self, doc_id: str) -> bool:
        return False

    def gone(self, doc_ids: Sequence[str]) -> list[str]:
        return list(doc_ids)

    def close(self) -> None:
        return None


__all__ = ["BaseSource", "Item", "Notice", "Progress", "Skipped", "Source", "Stub"]
