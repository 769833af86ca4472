"""Ingestion: discover -> load -> chunk -> (skip unchanged) -> embed -> write -> delete stale.

Three stages overlap so the embedder, the expensive part, is never idle waiting on I/O:

- a producer thread loads and chunks files and asks the store what it already holds for them;
- the calling thread embeds, in batches sorted by length within a window;
- a writer thread writes to the store.

Incremental rules (exact, because chunk ids are content-addressed from the document version):

- A document is *unchanged* when the store holds exactly the chunk ids its current version produces. Nothing
  is embedded or written for it.
- Otherwise the missing chunks are written; a chunk whose text (``chunk_sha``) is already stored for that
  document reuses the stored vector instead of being embedded again. Only after all of a document's new
  chunks are written are its stale chunks deleted, and not at all if any of its writes failed. A crash at any
  point leaves old and/or new chunks, never neither, and the next run completes the job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esrag import __version__
from esrag.chunking import Chunker, chunk_document
from esrag.config import Settings
from esrag.embedders.base import Embedder
from esrag.errors import EsragError
from esrag.loaders import Skipped, discover, load_file
from esrag.stores.base import Store
from esrag.types import Chunk, Document, EmbeddedChunk, IndexMeta, MetadataValue, WriteError

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class IngestReport:
    """What an ingest did. ``ok`` is False when any chunk failed to write or embed."""

    files: int = 0
    documents: int = 0
    documents_new: int = 0
    documents_changed: int = 0
    documents_unchanged: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_unchanged: int = 0
    chunks_deleted: int = 0
    decode_errors: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[WriteError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "documents": self.documents,
            "documents_new": self.documents_new,
            "documents_changed": self.documents_changed,
            "documents_unchanged": self.documents_unchanged,
            "chunks_written": self.chunks_written,
            "chunks_embedded": self.chunks_embedded,
            "chunks_reused": self.chunks_reused,
            "chunks_unchanged": self.chunks_unchanged,
            "chunks_deleted": self.chunks_deleted,
            "decode_errors": self.decode_errors,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "errors": [{"chunk_id": e.chunk_id, "source": e.source, "reason": e.reason, "status": e.status}
                       for e in self.errors],
            "seconds": round(self.seconds, 3),
            "chunks_per_s": round(self.chunks_per_s, 2),
        }


@dataclass
class _DocPlan:
    """What to do for one changed or new document."""

    doc: Document
    chunks: list[Chunk]
    to_embed: list[Chunk]
    reused: list[EmbeddedChunk]
    stale_ids: list[str]
    is_new: bool


class Ingestor:
    """Ingest files or Documents into one store with one embedder.

    ``on_progress(files_done, files_total, report)`` is called from the embedding thread after each window.
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
        self.chunker = Chunker(
            count_tokens=embedder.count_tokens,
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            max_tokens=embedder.max_tokens,
        )

    def index_meta(self) -> IndexMeta:
        return IndexMeta(
            model=self.embedder.model_name,
            dims=self.embedder.dims,
            similarity=self.settings.similarity,
            normalized=True,
            chunk_size=self.settings.chunk_size,
            chunk_overlap=self.settings.chunk_overlap,
            esrag_version=__version__,
        )

    # -- entry points ---------------------------------------------------------------------------------

    def ingest_paths(
        self,
        paths: Sequence[str | Path],
        glob: Sequence[str] = (),
        exclude: Sequence[str] = (),
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> IngestReport:
        """Discover files under ``paths`` and ingest them. Missing paths raise LoaderError before any
        write; unreadable or unsupported files are skipped and listed in the report."""
        files, skipped = discover(paths, glob=glob, exclude=exclude)
        report = IngestReport(files=len(files), skipped=list(skipped))

        def documents() -> Iterator[tuple[int, Document]]:
            for i, path in enumerate(files):
                docs, skips = load_file(path, metadata or {})
                report.skipped.extend(skips)
                for doc in docs:
                    yield i + 1, doc
                if not docs:
                    yield i + 1, _NO_DOC

        return self._run(documents(), len(files), report)

    def ingest_documents(self, docs: Iterable[Document], total: int | None = None) -> IngestReport:
        """Ingest Documents that are already loaded (BEIR corpora, API callers)."""
        report = IngestReport()
        return self._run(((i + 1, d) for i, d in enumerate(docs)), total or 0, report)

    # -- pipeline -------------------------------------------------------------------------------------

    def _run(self, docs: Iterator[tuple[int, Document]], total: int, report: IngestReport) -> IngestReport:
        start = time.perf_counter()
        self.store.ensure_index(self.index_meta())
        plans: queue.Queue[Any] = queue.Queue(maxsize=4)
        writes: queue.Queue[Any] = queue.Queue(maxsize=4)
        stop = threading.Event()
        failures: list[BaseException] = []
        producer = threading.Thread(target=self._produce, args=(docs, report, plans, stop, failures),
                                    name="esrag-load", daemon=True)
        writer = threading.Thread(target=self._write, args=(writes, report, failures),
                                  name="esrag-write", daemon=True)
        bar = _progress_bar(total, self.progress and total > 0)
        producer.start()
        writer.start()
        try:
            while True:
                item = plans.get()
                if item is _DONE:
                    break
                position, batch = item
                self._embed_window(batch, report, writes)
                if bar is not None:
                    bar.update(position - bar.n)
                    bar.set_postfix(chunks=report.chunks_written, embedded=report.chunks_embedded,
                                    refresh=False)
                if self.on_progress:
                    self.on_progress(position, total, report)
        finally:
            stop.set()
            _drain(plans)
            writes.put(_DONE)
            writer.join()
            producer.join(timeout=5)
            if bar is not None:
                bar.close()
        if failures:
            err = failures[0]
            if isinstance(err, EsragError):
                raise err
            raise EsragError(f"ingest failed: {type(err).__name__}: {err}") from err
        report.seconds = time.perf_counter() - start
        return report

    def _produce(
        self,
        docs: Iterator[tuple[int, Document]],
        report: IngestReport,
        out: queue.Queue[Any],
        stop: threading.Event,
        failures: list[BaseException],
    ) -> None:
        """Load + chunk documents, compare with the store, emit windows of plans for changed docs."""
        try:
            pending: list[tuple[Document, list[Chunk]]] = []
            pending_chunks = 0
            window: list[_DocPlan] = []
            window_chunks = 0
            position = 0
            for position, doc in docs:
                if stop.is_set():
                    return
                if doc is _NO_DOC:
                    continue
                report.documents += 1
                report.decode_errors += doc.decode_errors
                chunks = chunk_document(doc, self.chunker)
                if not chunks:
                    report.skipped.append(Skipped(doc.source, "empty document"))
                    continue
                pending.append((doc, chunks))
                pending_chunks += len(chunks)
                if len(pending) >= 64 or pending_chunks >= self.window:
                    for plan in self._plan(pending, report):
                        window.append(plan)
                        window_chunks += len(plan.to_embed) + len(plan.reused)
                    pending, pending_chunks = [], 0
                    if window_chunks >= self.window:
                        out.put((position, window))
                        window, window_chunks = [], 0
            window.extend(self._plan(pending, report))
            if window:
                out.put((position, window))
            elif position:
                out.put((position, []))
        except BaseException as e:  # surfaced by _run in the calling thread
            failures.append(e)
        finally:
            out.put(_DONE)

    def _plan(self, batch: list[tuple[Document, list[Chunk]]], report: IngestReport) -> list[_DocPlan]:
        """Decide, for a batch of chunked documents, what to embed, reuse, write and delete."""
        if not batch:
            return []
        stored = self.store.list_chunks([doc.doc_id for doc, _ in batch])
        plans: list[_DocPlan] = []
        reuse_wanted: dict[str, str] = {}  # stored chunk id -> chunk_sha, to fetch vectors for
        for doc, chunks in batch:
            refs = stored.get(doc.doc_id, [])
            expected = {c.id for c in chunks}
            have = {r.id for r in refs}
            if expected == have:
                report.documents_unchanged += 1
                report.chunks_unchanged += len(chunks)
                continue
            missing = [c for c in chunks if c.id not in have]
            by_sha = {r.chunk_sha: r.id for r in refs}
            to_embed = [c for c in missing if c.chunk_sha not in by_sha]
            for c in missing:
                if c.chunk_sha in by_sha:
                    reuse_wanted[by_sha[c.chunk_sha]] = c.chunk_sha
            plans.append(_DocPlan(doc, missing, to_embed, [], sorted(have - expected), is_new=not refs))
        vectors = self.store.get_embeddings(list(reuse_wanted)) if reuse_wanted else {}
        by_sha_vec = {reuse_wanted[i]: v for i, v in vectors.items()}
        for plan in plans:
            embed_ids = {c.id for c in plan.to_embed}
            for c in plan.chunks:
                if c.id in embed_ids:
                    continue
                vec = by_sha_vec.get(c.chunk_sha)
                if vec is None:  # vanished between the two reads: embed it after all
                    plan.to_embed.append(c)
                else:
                    plan.reused.append(EmbeddedChunk(c, vec))
        return plans

    def _embed_window(self, plans: list[_DocPlan], report: IngestReport, writes: queue.Queue[Any]) -> None:
        """Embed the window's chunks (longest first, so batches pad little) and hand them to the writer,
        then each document's stale-chunk deletion."""
        todo = [c for p in plans for c in p.to_embed]
        order = sorted(range(len(todo)), key=lambda i: len(todo[i].text), reverse=True)
        vectors: list[np.ndarray | None] = [None] * len(todo)
        step = self.embedder_batch()
        for lo in range(0, len(order), step):
            idx = order[lo:lo + step]
            embedded = self.embedder.embed_documents([todo[i].text for i in idx])
            for i, vec in zip(idx, embedded, strict=True):
                vectors[i] = vec
        report.chunks_embedded += len(todo)
        vec_by_id = {c.id: v for c, v in zip(todo, vectors, strict=True) if v is not None}
        for plan in plans:
            if plan.is_new:
                report.documents_new += 1
            else:
                report.documents_changed += 1
            report.chunks_reused += len(plan.reused)
            items = [*plan.reused, *(EmbeddedChunk(c, vec_by_id[c.id]) for c in plan.to_embed)]
            writes.put(("write", items))
            if plan.stale_ids:
                writes.put(("delete", plan.doc.doc_id, plan.stale_ids))
        writes.put(("flush",))  # one write per window at least: progress is durable as it is made

    def embedder_batch(self) -> int:
        return max(1, self.settings.batch_size)

    def _write(self, inbox: queue.Queue[Any], report: IngestReport, failures: list[BaseException]) -> None:
        """Writer thread: write batches in order; delete stale chunks only for fully written documents."""
        failed_docs: set[str] = set()
        batch: list[EmbeddedChunk] = []

        def flush() -> None:
            if not batch:
                return
            result = self.store.write(batch)
            report.chunks_written += result.written
            if result.errors:
                report.errors.extend(result.errors)
                bad = {e.chunk_id for e in result.errors}
                failed_docs.update(ec.chunk.doc_id for ec in batch if ec.chunk.id in bad)
            batch.clear()

        while True:
            item = inbox.get()
            if item is _DONE:
                break
            if failures:
                continue  # drain without writing once something failed elsewhere
            try:
                if item[0] == "write":
                    batch.extend(item[1])
                    if len(batch) >= 500:
                        flush()
                elif item[0] == "flush":
                    flush()
                else:
                    flush()
                    _, doc_id, stale = item
                    if doc_id in failed_docs:
                        log.warning("keeping the old chunks of %s: some of its new chunks failed", doc_id)
                        continue
                    report.chunks_deleted += self.store.delete_chunks(stale)
            except BaseException as e:
                failures.append(e)
        if not failures:
            try:
                flush()
            except BaseException as e:
                failures.append(e)


_NO_DOC = Document(doc_id="", source="", text="")


def _drain(q: queue.Queue[Any]) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="ingest", dynamic_ncols=True, leave=False)
