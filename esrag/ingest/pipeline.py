"""Ingestion of one source: plan -> embed -> write -> prune.

Where documents come from is the source's business (``esrag.sources``: files, an Elasticsearch index,
documents in memory); this module knows nothing of files. Three stages overlap so the embedder, the
expensive part, is never idle waiting on I/O:

- a producer thread reads the source, compares each document's version hash with the store, chunks only
  the documents that changed, and looks up which of their chunks the index already holds;
- the calling thread embeds, in batches sorted by length within a window, through one stream of
  requests (``esrag.embedders.inflight.Stream``: ``in_flight`` at once for a remote embedder): window N+1's
  requests are queued before window N is handed to the writer, so the embedder does not wait while a
  window is handed over and written; windows are handed over whole and in order;
- a writer thread writes to the store.

Memory stays bounded: at most two windows are embedded or being embedded and not yet handed over
(``_AHEAD`` + 1), the writer's inbox holds at most 4 documents and its batch about ``_WRITE_BATCH`` chunks.

Incremental rules (exact, because chunk ids are content-addressed from the document version):

- A document is *unchanged* when the store holds exactly one complete version with its current hash
  (``doc_sha``: text, title, metadata, chunking parameters and model; or the source's ``version`` instead
  of the content). It is neither chunked nor embedded: an unchanged re-run never touches the embedder, so
  a lazily loaded model is never loaded. A source may yield a ``Stub`` (id and version only): its content
  is fetched only when the version differs from the stored one.
- Otherwise the missing chunks are written; a chunk whose text (``chunk_sha``) the index already holds, in
  this document or any other (a moved or renamed file), reuses the stored vector instead of being embedded
  again. A document's stale chunks are deleted in the same store request (``Store.write(...,
  delete_ids=...)``) as the last of its new chunks, and not at all if an earlier batch of its chunks
  failed. A crash at any point leaves old and/or new chunks, never neither, and the next run completes
  the job.
- After a complete read, the stored documents of the source (``Source.scopes``/``owns``) that this run did
  not produce are either superseded (``Source.superseded``: an earlier form of a document it did produce,
  deleted in any case, their chunks counted in ``chunks_deleted``) or, if ``Source.gone`` says so, gone:
  counted (``documents_gone``) and, with ``prune``, deleted. Another source's documents are never looked at.
- The store is refreshed once, at the end (``Store.refresh``).

Failures: a document that cannot be loaded or chunked is a ``Skipped`` entry and the run goes on; a chunk
the store rejects is a ``WriteError`` (``ok`` False, exit 1). A failure of the store or the source itself
(or any other exception) stops every stage promptly and raises ``IngestAborted``, whose ``report`` says
what was written and what was not; nothing is pruned then.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esrag import __version__
from esrag.config import Settings
from esrag.embedders import fingerprint, inflight
from esrag.embedders.base import Embedder
from esrag.errors import EsragError, ModelMismatchError, setting
from esrag.ingest.chunking import Chunker, chunk_document
from esrag.ingest.context import ContextTemplate
from esrag.ingest.report import IngestAborted, IngestReport
from esrag.sources.base import Progress, Source, Stub
from esrag.sources.loaders import Notice, Skipped
from esrag.stores.base import Store
from esrag.types import Chunk, ChunkRef, Document, EmbeddedChunk, IndexMeta, WriteError, version_sha

log = logging.getLogger(__name__)

_DONE = object()
#: documents per store lookup in the producer
_LOOKUP_BATCH = 64
#: stubs per store lookup (an id and a version each: an unchanged re-run is mostly these lookups)
_STUB_BATCH = 1000
#: chunks per store write
_WRITE_BATCH = 500
#: windows whose requests are queued while an older one is still out or being handed to the writer
_AHEAD = 1


@dataclass
class _DocPlan:
    """What to do for one changed or new document."""

    doc: Document
    chunks: list[Chunk]
    to_embed: list[Chunk]
    reused: list[EmbeddedChunk]
    stale_ids: list[str]
    is_new: bool


@dataclass
class _Window:
    """One window of plans on its way through the embedder: the source position it reaches and the chunks
    it embeds (``todo``, in plan order)."""

    position: int
    plans: list[_DocPlan]
    todo: list[Chunk]


def build_params(settings: Settings, meta: IndexMeta | None = None) -> dict[str, Any]:
    """The IndexMeta build parameters an ingest with ``settings`` uses. The analyzer is the existing index's
    (``meta``) unless one was chosen explicitly: it belongs to the index (on Elasticsearch it cannot change)."""
    analyzer = settings.analyzer
    if meta is not None and "analyzer" not in settings.sources:
        analyzer = meta.analyzer
    return {"chunk_size": settings.chunk_size, "chunk_overlap": settings.chunk_overlap,
            "embed_template": settings.embed_template, "analyzer": analyzer,
            "fingerprint": meta.fingerprint if meta is not None else ""}  # recorded by _start_window


def index_meta(embedder: Embedder, settings: Settings, existing: IndexMeta | None = None) -> IndexMeta:
    """What a new index records (for an ``existing`` one: what it should record now). Reads the embedder's
    ``dims`` (which may load its model)."""
    return IndexMeta(model=embedder.model_name, dims=embedder.dims, similarity=settings.similarity,
                     normalized=True, esrag_version=__version__, **build_params(settings, existing))


def make_chunker(embedder: Embedder, settings: Settings) -> Chunker:
    """The chunker of an index of ``settings`` embedded by ``embedder``: its tokenizer, the chunk size and
    overlap, the model's token limit. Loads the model."""
    return Chunker(count_tokens=embedder.count_tokens, chunk_size=settings.chunk_size,
                   chunk_overlap=settings.chunk_overlap, max_tokens=embedder.max_tokens)


class Ingestor:
    """Ingest one source into one store with one embedder.

    The embedder is used only for documents that changed: its ``count_tokens``, ``max_tokens``, ``dims``
    and ``embed_*`` are not touched by a run in which nothing changed. ``on_progress(units_done,
    units_total, report)`` is called from the calling thread after each window is handed to the writer, in
    order (units: the source's, files or records; total 0 when unknown).
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        settings: Settings,
        progress: bool = False,
        window: int | None = None,
        on_progress: Callable[[int, int, IngestReport], None] | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.progress = progress
        self.window = window or max(settings.batch_size * 4, 64)
        self.on_progress = on_progress
        self._chunker: Chunker | None = None
        self.template = ContextTemplate(settings.embed_template)
        self._index_ready = False

    @property
    def chunker(self) -> Chunker:
        """The chunker, built on first use (it needs the embedder's tokenizer)."""
        if self._chunker is None:
            self._chunker = make_chunker(self.embedder, self.settings)
        return self._chunker

    @property
    def signature(self) -> str:
        """What, besides a document's own content, determines its chunks and vectors: part of ``doc_sha``.
        Known without loading the model (the model name fixes its token limit)."""
        # v3: chunks record their section, so documents chunked before are rewritten once (vectors reused)
        signature = (f"recursive:v3:model={self.embedder.model_name}:size={self.settings.chunk_size}:"
                     f"overlap={self.settings.chunk_overlap}")
        return signature if self.template.plain else f"{signature}:{self.template.signature}"

    # -- entry point ----------------------------------------------------------------------------------

    def ingest(self, source: Source, prune: bool = False) -> IngestReport:
        """Ingest ``source``: write what changed, then delete what it supersedes and count (with ``prune``,
        delete) its stored documents that are gone. ``source.start()`` errors (a missing path or index)
        are raised before any write. When the source has nothing at all, nothing is created and the report
        says so (``nothing_found``)."""
        total = source.start()
        report = IngestReport(files=total or 0 if source.unit == "file" else 0)
        if total == 0 and not (prune and self._store_exists()):
            for item in source.items():
                _note(item, report)
            return report
        produced: set[str] = set()
        report = self._run(source, total or 0, report, produced)
        self._prune(source, produced, prune, report)
        return report

    # -- pipeline -------------------------------------------------------------------------------------

    def _store_exists(self, report: IngestReport | None = None) -> bool:
        meta = self.store.read_meta()
        if meta is not None and meta.model != self.embedder.model_name:
            raise ModelMismatchError(
                f"index {self.store.describe().get('index')!r} was built with model {meta.model!r}, but the "
                f"configured model is {self.embedder.model_name!r}; set {setting('model')} to {meta.model!r} or "
                f"ingest into a new index ({setting('index')})")
        if meta is not None:
            wanted, recorded = build_params(self.settings, meta), meta.build_params()
            if recorded != wanted:
                changed = sorted(k for k, v in wanted.items() if recorded[k] != v)
                self.store.ensure_index(dataclasses.replace(meta, **wanted))
                if report is not None:
                    report.warnings.append(
                        f"the index was built with other {', '.join(changed)}: documents ingested from now on "
                        f"use the new settings (re-ingest every source to make the index uniform)")
        self._index_ready = meta is not None
        return meta is not None

    def _ensure_index(self) -> None:
        """Create the index on the first write (so a run that writes nothing creates nothing)."""
        if not self._index_ready:
            self.store.ensure_index(index_meta(self.embedder, self.settings))
            self._index_ready = True

    def _run(self, source: Source, total: int, report: IngestReport, produced: set[str]) -> IngestReport:
        start = time.perf_counter()
        exists = self._store_exists(report)
        plans: queue.Queue[Any] = queue.Queue(maxsize=4)
        writes: queue.Queue[Any] = queue.Queue(maxsize=4)
        stop = threading.Event()
        failures: list[BaseException] = []
        pending: dict[str, int] = {}  # doc_id -> chunks handed to the writer and not yet written
        producer = threading.Thread(target=self._produce, args=(source, exists, report, produced, plans, stop,
                                                                   failures), name="esrag-load", daemon=True)
        writer = threading.Thread(target=self._write, args=(writes, report, pending, stop, failures),
                                  name="esrag-write", daemon=True)
        bar = _progress_bar(total, source.unit, self.progress and total > 0)
        producer.start()
        writer.start()
        try:
            # the embedder is asked for its sizes only once there is something to embed (lazy models)
            with inflight.Stream[_Window](lambda texts: self.embedder.embed_documents(texts),
                                          lambda: inflight.request_size(self.embedder, self.embedder_batch()),
                                          lambda: inflight.requests_in_flight(self.embedder), stop,
                                          ahead=_AHEAD) as stream:
                while not stop.is_set():
                    item = plans.get()
                    if item is _DONE:
                        break
                    window = self._start_window(*item)
                    # window N+1's requests are queued before window N is handed to the writer
                    for done, result in stream.submit([c.embed_text for c in window.todo], window):
                        self._finish_window(done, result, report, writes, pending, stop, bar, total)
                for done, result in stream.drain():
                    self._finish_window(done, result, report, writes, pending, stop, bar, total)
        except BaseException as e:
            failures.append(e)
        finally:
            if failures:
                stop.set()
            writes.put(_DONE)
            writer.join()
            stop.set()
            _drain(plans)
            producer.join(timeout=5)
            if bar is not None:
                bar.close()
        report.seconds = time.perf_counter() - start
        if failures:
            err = failures[0]
            report.aborted = f"{type(err).__name__}: {err}"
            report.documents_not_written = sorted(d for d, n in pending.items() if n)
            message = str(err) if isinstance(err, EsragError) else f"ingest failed: {type(err).__name__}: {err}"
            raise IngestAborted(message, report) from err
        if self._index_ready:
            self.store.refresh()
        return report

    def _produce(self, source: Source, exists: bool, report: IngestReport, produced: set[str],
                 out: queue.Queue[Any], stop: threading.Event, failures: list[BaseException]) -> None:
        """Read the source, skip the unchanged documents, chunk and plan the rest; emit windows of plans."""
        try:
            batch: list[Document | Stub] = []
            window: list[_DocPlan] = []
            window_chunks = 0
            position = 0
            # about a window of chunks' worth of text (4 characters a token), so that embedding starts early
            window_chars = self.window * self.settings.chunk_size * 4
            batch_chars = 0
            stubs = 0

            def flush(at: int) -> None:
                nonlocal window, window_chunks, batch_chars, stubs
                for plan in self._plan(batch, exists, report, produced, source):
                    window.append(plan)
                    window_chunks += len(plan.chunks)
                batch.clear()
                batch_chars = stubs = 0
                if window_chunks >= self.window or not window:
                    out.put((at, window))
                    window, window_chunks = [], 0

            for item in source.items():
                if stop.is_set():
                    return
                if isinstance(item, Progress):
                    position = item.done
                    if not batch:
                        out.put((position, []))  # progress of units without documents
                    continue
                if isinstance(item, Document | Stub):
                    report.documents += 1
                    if isinstance(item, Document):
                        report.decode_errors += item.decode_errors
                        batch_chars += len(item.text)
                    else:
                        stubs += 1
                    batch.append(item)
                else:
                    _note(item, report)
                if len(batch) - stubs >= _LOOKUP_BATCH or stubs >= _STUB_BATCH or batch_chars >= window_chars:
                    flush(position)
            flush(position)
            if window:
                out.put((position, window))
        except BaseException as e:  # surfaced by _run in the calling thread
            failures.append(e)
            stop.set()
        finally:
            out.put(_DONE)

    def _plan(self, batch: list[Document | Stub], exists: bool, report: IngestReport, produced: set[str],
              source: Source) -> list[_DocPlan]:
        """Decide, for a batch of documents, what to skip, fetch, chunk, embed, reuse, write and delete."""
        if not batch:
            return []
        stored: dict[str, list[ChunkRef]] = self.store.list_chunks([d.doc_id for d in batch]) if exists else {}
        docs: list[Document] = []
        stubs: list[Stub] = []
        for item in batch:
            refs = stored.get(item.doc_id, [])
            if isinstance(item, Stub):
                sha = version_sha(item.doc_id, item.version, self.signature) if item.version else ""
            else:
                sha = item.sha(self.signature)
            if sha and refs and all(r.doc_sha == sha for r in refs) and len(refs) == refs[0].chunk_count:
                report.documents_unchanged += 1
                report.chunks_unchanged += len(refs)
                produced.add(item.doc_id)
            elif isinstance(item, Stub):
                stubs.append(item)
            else:
                docs.append(item)
        if stubs:
            for got in source.fetch(stubs):
                if isinstance(got, Skipped):
                    report.skipped.append(got)
                    continue
                report.decode_errors += got.decode_errors
                refs = stored.get(got.doc_id, [])
                sha = got.sha(self.signature)
                if refs and all(r.doc_sha == sha for r in refs) and len(refs) == refs[0].chunk_count:
                    report.documents_unchanged += 1  # fetched by content: it had no version
                    report.chunks_unchanged += len(refs)
                    produced.add(got.doc_id)
                else:
                    docs.append(got)
        changed: list[tuple[Document, list[Chunk], list[ChunkRef]]] = []
        for doc in docs:
            refs = stored.get(doc.doc_id, [])
            try:
                chunks = chunk_document(doc, self.chunker, doc_sha=doc.sha(self.signature), template=self.template)
            except Exception as e:  # a tokenizer error on odd input: skip this document, go on
                report.skipped.append(Skipped(doc.source, f"cannot chunk: {type(e).__name__}: {e}"))
                continue
            if not chunks:
                report.skipped.append(Skipped(doc.source, "empty document"))
                continue
            produced.add(doc.doc_id)
            changed.append((doc, chunks, refs))
        # vectors to reuse: by text, from this document's stored chunks or any other document's
        have_ids = {r.id for _, _, refs in changed for r in refs}
        wanted = {c.chunk_sha for _, chunks, _ in changed for c in chunks if c.id not in have_ids}
        vectors = self.store.get_embeddings_by_sha(sorted(wanted)) if exists and wanted else {}
        plans: list[_DocPlan] = []
        for doc, chunks, refs in changed:
            have = {r.id for r in refs}
            missing = [c for c in chunks if c.id not in have]
            stale = sorted(have - {c.id for c in chunks})
            reused = [EmbeddedChunk(c, vectors[c.chunk_sha]) for c in missing if c.chunk_sha in vectors]
            to_embed = [c for c in missing if c.chunk_sha not in vectors]
            plans.append(_DocPlan(doc, missing, to_embed, reused, stale, is_new=not refs))
        return plans

    def _start_window(self, position: int, plans: list[_DocPlan]) -> _Window:
        """Before a window's requests go out: create the index on the first write and, before the first
        embedding, check the embedder's fingerprint against the index's (recorded when the index has
        none)."""
        todo = [c for p in plans for c in p.to_embed]
        if plans:
            self._ensure_index()
        if todo:
            fingerprint.check_once(self, self.store, self.embedder)
        return _Window(position, plans, todo)

    def _finish_window(self, window: _Window, result: inflight.WindowResult, report: IngestReport,
                       writes: queue.Queue[Any], pending: dict[str, int], stop: threading.Event, bar: Any,
                       total: int) -> None:
        """Hand an embedded window's documents, with their stale chunk ids, to the writer, in order, then
        report progress. Stops once another stage failed. A failed request fails only its own chunks: each
        is a ``WriteError`` naming its source; the document's other chunks are written and its old chunks
        kept, so the next run embeds exactly the failed ones."""
        if stop.is_set():
            return
        if window.plans:
            self._hand_over(window, result, report, writes, pending, stop)
        if bar is not None:
            bar.update(window.position - bar.n)
            bar.set_postfix(chunks=report.chunks_written, embedded=report.chunks_embedded, refresh=False)
        if self.on_progress:
            self.on_progress(window.position, total, report)

    def _hand_over(self, window: _Window, result: inflight.WindowResult, report: IngestReport,
                   writes: queue.Queue[Any], pending: dict[str, int], stop: threading.Event) -> None:
        todo = window.todo
        report.chunks_embedded += result.embedded
        failed: dict[str, str] = {}
        for idx, err in result.failed:
            log.warning("embedding %d chunks failed: %s", len(idx), err)
            for i in idx:
                failed[todo[i].id] = f"embedding failed: {err}"
                report.errors.append(WriteError(todo[i].id, todo[i].source, failed[todo[i].id]))
        vec_by_id = {c.id: v for c, v in zip(todo, result.vectors, strict=True) if v is not None}
        for plan in window.plans:
            if stop.is_set():
                return
            if plan.is_new:
                report.documents_new += 1
            else:
                report.documents_changed += 1
            report.chunks_reused += len(plan.reused)
            items = [*plan.reused, *(EmbeddedChunk(c, vec_by_id[c.id]) for c in plan.to_embed if c.id in vec_by_id)]
            stale = [] if any(c.id in failed for c in plan.to_embed) else plan.stale_ids
            pending[plan.doc.doc_id] = pending.get(plan.doc.doc_id, 0) + len(items)
            writes.put(("doc", plan.doc.doc_id, items, stale))
        writes.put(("flush",))  # one write per window at least: progress is durable as it is made

    def embedder_batch(self) -> int:
        return max(1, self.settings.batch_size)

    def _write(self, inbox: queue.Queue[Any], report: IngestReport, pending: dict[str, int],
               stop: threading.Event, failures: list[BaseException]) -> None:
        """Writer thread: write batches in order, each with the stale ids of the documents it completes
        (unless an earlier batch of that document failed). On a failure it stops the other stages and
        drains its inbox without writing."""
        failed_docs: set[str] = set()
        batch: list[EmbeddedChunk] = []
        deletes: list[str] = []

        def flush() -> None:
            if not batch and not deletes:
                return
            result = self.store.write(batch, delete_ids=deletes)
            report.chunks_written += result.written
            report.chunks_deleted += result.deleted
            bad = {e.chunk_id for e in result.errors}
            report.errors.extend(result.errors)
            for ec in batch:
                pending[ec.chunk.doc_id] -= 1
                if ec.chunk.id in bad:
                    failed_docs.add(ec.chunk.doc_id)
            batch.clear()
            deletes.clear()

        while True:
            item = inbox.get()
            if item is _DONE:
                break
            if failures:
                continue  # drain without writing once something failed
            try:
                if item[0] == "doc":
                    _, doc_id, items, stale = item
                    batch.extend(items)
                    if stale and doc_id in failed_docs:
                        log.warning("keeping the old chunks of %s: some of its new chunks failed", doc_id)
                    else:
                        deletes.extend(stale)
                    if len(batch) >= _WRITE_BATCH:
                        flush()
                else:
                    flush()
            except BaseException as e:
                failures.append(e)
                stop.set()
        if not failures:
            try:
                flush()
            except BaseException as e:
                failures.append(e)
                stop.set()

    def _prune(self, source: Source, produced: set[str], prune: bool, report: IngestReport) -> None:
        """Delete the source's stored documents that this run superseded; count (with ``prune``, delete)
        those that are gone from it (see the module docstring). Only the source's own scopes are read."""
        if not self._index_ready and not self._store_exists():
            return
        candidates: set[str] = set()
        for prefix in source.scopes():
            candidates.update(d for d in self.store.list_documents(prefix) if d not in produced and source.owns(d))
        replaced = sorted(d for d in candidates if source.superseded(d))
        rest = sorted(candidates - set(replaced))
        gone = sorted(source.gone(rest)) if rest else []
        report.documents_gone = len(gone)
        doomed = replaced + (gone if prune else [])
        if not doomed:
            return
        ids = [r.id for refs in self.store.list_chunks(doomed).values() for r in refs]
        for lo in range(0, len(ids), _WRITE_BATCH * 10):
            report.chunks_deleted += self.store.write([], delete_ids=ids[lo:lo + _WRITE_BATCH * 10]).deleted
        report.documents_removed = len(gone) if prune else 0
        self.store.refresh()


def _note(item: object, report: IngestReport) -> None:
    """Record a Skipped or Notice item of a source in the report (other items are not notes)."""
    if isinstance(item, Skipped):
        report.skipped.append(item)
    elif isinstance(item, Notice):
        report.warnings.append(f"{item.path}: {item.message}" if item.path else item.message)


def _drain(q: queue.Queue[Any]) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


def _progress_bar(total: int, unit: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc="ingest", dynamic_ncols=True, leave=False)


__all__ = ["IngestAborted", "IngestReport", "Ingestor", "build_params", "index_meta"]
