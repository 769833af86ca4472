"""Ingestion: discover -> load -> (skip unchanged) -> chunk -> embed -> write + delete stale -> prune.

Three stages overlap so the embedder, the expensive part, is never idle waiting on I/O:

- a producer thread loads files, compares each document's content hash with the store, chunks only the
  documents that changed, and looks up which of their chunks the index already holds;
- the calling thread embeds, in batches sorted by length within a window;
- a writer thread writes to the store.

Incremental rules (exact, because chunk ids are content-addressed from the document version):

- A document is *unchanged* when the store holds exactly one complete version with its current hash
  (``doc_sha``: text, title, metadata, chunking parameters and model). It is neither chunked nor embedded:
  an unchanged re-run never touches the embedder, so a lazily loaded model is never loaded.
- Otherwise the missing chunks are written; a chunk whose text (``chunk_sha``) the index already holds, in
  this document or any other (a moved or renamed file), reuses the stored vector instead of being embedded
  again. A document's stale chunks are deleted in the same store request (``Store.write(...,
  delete_ids=...)``) as the last of its new chunks, and not at all if an earlier batch of its chunks
  failed. A crash at any point leaves old and/or new chunks, never neither, and the next run completes
  the job.
- ``prune``: documents under the given paths that the store holds but this run did not produce (deleted,
  moved, now empty, skipped or unreadable files) are deleted. Without it they are only counted
  (``documents_gone``). Only documents under the given paths are considered, never another root's.
- A large text file is loaded as segments ``<doc_id>#part-<hash>`` (``esrag.loaders``). Once such a file
  has been read to the end, its stored forms that this run did not produce are deleted, with or without
  ``prune``: the old version of each edited segment, and the whole-file document of a file that has grown
  into segments (or the segments of one that has shrunk below the threshold). They are the file's earlier
  version, as the stale chunks of an edited document are; their chunks count in ``chunks_deleted``.
- The store is refreshed once, at the end (``Store.refresh``).

Failures: a file that cannot be loaded or chunked is a ``Skipped`` entry and the run goes on; a chunk the
store rejects is a ``WriteError`` (``ok`` False, exit 1). A failure of the store itself (or any other
exception) stops every stage promptly and raises ``IngestAborted``, whose ``report`` says what was written
and what was not.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esrag import __version__
from esrag.chunking import Chunker, chunk_document
from esrag.config import Settings
from esrag.context import ContextTemplate
from esrag.embedders import fingerprint, inflight
from esrag.embedders.base import Embedder
from esrag.errors import EsragError, ModelMismatchError, setting
from esrag.ingest_report import IngestAborted, IngestReport
from esrag.loaders import (
    MAX_FILE_BYTES,
    STREAM_EXTENSIONS,
    Notice,
    Skipped,
    SourceFile,
    discover_sources,
    doc_id_candidates,
    iter_file,
)
from esrag.stores.base import Store
from esrag.text_stream import part_owner
from esrag.types import Chunk, ChunkRef, Document, EmbeddedChunk, IndexMeta, MetadataValue, WriteError

log = logging.getLogger(__name__)

_DONE = object()
#: documents per store lookup in the producer
_LOOKUP_BATCH = 64
#: chunks per store write
_WRITE_BATCH = 500


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

    The embedder is used only for documents that changed: its ``count_tokens``, ``max_tokens``, ``dims``
    and ``embed_*`` are not touched by a run in which nothing changed. ``on_progress(files_done,
    files_total, report)`` is called from the embedding thread after each window.
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
            self._chunker = Chunker(
                count_tokens=self.embedder.count_tokens,
                chunk_size=self.settings.chunk_size,
                chunk_overlap=self.settings.chunk_overlap,
                max_tokens=self.embedder.max_tokens,
            )
        return self._chunker

    @property
    def signature(self) -> str:
        """What, besides a document's own content, determines its chunks and vectors: part of ``doc_sha``.
        Known without loading the model (the model name fixes its token limit)."""
        # v3: chunks record their section, so documents chunked before are rewritten once (vectors reused)
        signature = (f"recursive:v3:model={self.embedder.model_name}:size={self.settings.chunk_size}:"
                     f"overlap={self.settings.chunk_overlap}")
        return signature if self.template.plain else f"{signature}:{self.template.signature}"

    def index_meta(self, existing: IndexMeta | None = None) -> IndexMeta:
        """What a new index records (for an ``existing`` one: what it should record now)."""
        return IndexMeta(model=self.embedder.model_name, dims=self.embedder.dims,
                         similarity=self.settings.similarity, normalized=True, esrag_version=__version__,
                         **self._build_params(existing))

    # -- entry points ---------------------------------------------------------------------------------

    def ingest_paths(
        self,
        paths: Sequence[str | Path],
        glob: Sequence[str] = (),
        exclude: Sequence[str] = (),
        metadata: Mapping[str, MetadataValue] | None = None,
        prune: bool = False,
        follow_symlinks: bool = False,
        max_file_size: int | None = MAX_FILE_BYTES,
        doc_prefix: str = "",
    ) -> IngestReport:
        """Discover files under ``paths`` and ingest them (doc ids: see ``esrag.loaders``). Missing paths
        raise LoaderError before any write; files that cannot be loaded are skipped and listed. When no
        file at all is found, nothing is created and the report says so (``nothing_found``)."""
        files, skipped = discover_sources(paths, glob=glob, exclude=exclude, follow_symlinks=follow_symlinks,
                                          prefix=doc_prefix)
        report = IngestReport(files=len(files), skipped=list(skipped))
        scopes = _scopes(paths, doc_prefix)
        if not files:
            where = ", ".join(str(p) for p in paths)
            selection = f" matching --glob {' '.join(glob)}" if glob else ""
            report.warnings.append(f"nothing to ingest: no supported file{selection} under {where}")
        if not files and not (prune and self._store_exists()):
            return report
        produced: set[str] = set()
        read_whole: dict[str, bool] = {}  # text files read to the end: doc id -> loaded as segments

        def documents() -> Iterator[tuple[int, Document]]:
            for i, source in enumerate(files):
                noticed = failed = in_parts = False
                for item in iter_file(source.path, metadata or {}, source.doc_id, max_file_size):
                    if isinstance(item, Skipped):
                        report.skipped.append(item)
                        failed = True
                    elif isinstance(item, Notice):
                        report.warnings.append(f"{item.path}: {item.message}")
                    else:
                        noticed = True
                        in_parts = in_parts or item.doc_id != source.doc_id
                        yield i + 1, item
                if not noticed:
                    yield i + 1, _NO_DOC
                elif not failed and source.path.suffix.lower() in STREAM_EXTENSIONS:
                    read_whole[source.doc_id] = in_parts

        report = self._run(documents(), len(files), report, produced)
        self._prune(scopes, produced, prune, report, read_whole)
        return report

    def ingest_documents(self, docs: Iterable[Document], total: int | None = None) -> IngestReport:
        """Ingest Documents that are already loaded (BEIR corpora, API callers). Nothing is pruned."""
        report = IngestReport()
        return self._run(((i + 1, d) for i, d in enumerate(docs)), total or 0, report, set())

    # -- pipeline -------------------------------------------------------------------------------------

    def _store_exists(self, report: IngestReport | None = None) -> bool:
        meta = self.store.read_meta()
        if meta is not None and meta.model != self.embedder.model_name:
            raise ModelMismatchError(
                f"index {self.store.describe().get('index')!r} was built with model {meta.model!r}, but the "
                f"configured model is {self.embedder.model_name!r}; set {setting('model')} to {meta.model!r} or "
                f"ingest into a new index ({setting('index')})")
        if meta is not None:
            wanted, recorded = self._build_params(meta), meta.build_params()
            if recorded != wanted:
                changed = sorted(k for k, v in wanted.items() if recorded[k] != v)
                self.store.ensure_index(dataclasses.replace(meta, **wanted))
                if report is not None:
                    report.warnings.append(
                        f"the index was built with other {', '.join(changed)}: documents ingested from now on "
                        f"use the new settings (re-ingest every source to make the index uniform)")
        self._index_ready = meta is not None
        return meta is not None

    def _build_params(self, meta: IndexMeta | None = None) -> dict[str, Any]:
        """The IndexMeta build parameters this ingest uses. The analyzer is the existing index's unless one
        was chosen explicitly: it belongs to the index (on Elasticsearch it cannot change)."""
        analyzer = self.settings.analyzer
        if meta is not None and "analyzer" not in self.settings.sources:
            analyzer = meta.analyzer
        return {"chunk_size": self.settings.chunk_size, "chunk_overlap": self.settings.chunk_overlap,
                "embed_template": self.settings.embed_template, "analyzer": analyzer,
                "fingerprint": meta.fingerprint if meta is not None else ""}  # recorded by _embed_window

    def _ensure_index(self) -> None:
        """Create the index on the first write (so a run that writes nothing creates nothing)."""
        if not self._index_ready:
            self.store.ensure_index(self.index_meta())
            self._index_ready = True

    def _run(self, docs: Iterator[tuple[int, Document]], total: int, report: IngestReport,
             produced: set[str]) -> IngestReport:
        start = time.perf_counter()
        exists = self._store_exists(report)
        plans: queue.Queue[Any] = queue.Queue(maxsize=4)
        writes: queue.Queue[Any] = queue.Queue(maxsize=4)
        stop = threading.Event()
        failures: list[BaseException] = []
        pending: dict[str, int] = {}  # doc_id -> chunks handed to the writer and not yet written
        producer = threading.Thread(target=self._produce, args=(docs, exists, report, produced, plans, stop,
                                                                 failures), name="esrag-load", daemon=True)
        writer = threading.Thread(target=self._write, args=(writes, report, pending, stop, failures),
                                  name="esrag-write", daemon=True)
        bar = _progress_bar(total, self.progress and total > 0)
        producer.start()
        writer.start()
        try:
            while not stop.is_set():
                item = plans.get()
                if item is _DONE:
                    break
                position, batch = item
                self._embed_window(batch, report, writes, pending, stop)
                if bar is not None:
                    bar.update(position - bar.n)
                    bar.set_postfix(chunks=report.chunks_written, embedded=report.chunks_embedded,
                                    refresh=False)
                if self.on_progress:
                    self.on_progress(position, total, report)
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

    def _produce(self, docs: Iterator[tuple[int, Document]], exists: bool, report: IngestReport,
                 produced: set[str], out: queue.Queue[Any], stop: threading.Event,
                 failures: list[BaseException]) -> None:
        """Load documents, skip the unchanged ones, chunk and plan the rest; emit windows of plans."""
        try:
            batch: list[Document] = []
            window: list[_DocPlan] = []
            window_chunks = 0
            position = 0
            # about a window of chunks' worth of text (4 characters a token), so that embedding starts early
            window_chars = self.window * self.settings.chunk_size * 4

            def flush(at: int) -> None:
                nonlocal window, window_chunks
                for plan in self._plan(batch, exists, report, produced):
                    window.append(plan)
                    window_chunks += len(plan.chunks)
                batch.clear()
                if window_chunks >= self.window or not window:
                    out.put((at, window))
                    window, window_chunks = [], 0

            for position, doc in docs:
                if stop.is_set():
                    return
                if doc is not _NO_DOC:
                    report.documents += 1
                    report.decode_errors += doc.decode_errors
                    batch.append(doc)
                if len(batch) >= _LOOKUP_BATCH or sum(len(d.text) for d in batch) >= window_chars:
                    flush(position)
            flush(position)
            if window:
                out.put((position, window))
        except BaseException as e:  # surfaced by _run in the calling thread
            failures.append(e)
            stop.set()
        finally:
            out.put(_DONE)

    def _plan(self, batch: list[Document], exists: bool, report: IngestReport, produced: set[str]
              ) -> list[_DocPlan]:
        """Decide, for a batch of documents, what to skip, chunk, embed, reuse, write and delete."""
        if not batch:
            return []
        stored: dict[str, list[ChunkRef]] = self.store.list_chunks([d.doc_id for d in batch]) if exists else {}
        changed: list[tuple[Document, list[Chunk], list[ChunkRef]]] = []
        for doc in batch:
            refs = stored.get(doc.doc_id, [])
            sha = doc.sha(self.signature)
            if refs and all(r.doc_sha == sha for r in refs) and len(refs) == refs[0].chunk_count:
                report.documents_unchanged += 1
                report.chunks_unchanged += len(refs)
                produced.add(doc.doc_id)
                continue
            try:
                chunks = chunk_document(doc, self.chunker, doc_sha=sha, template=self.template)
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

    def _embed_window(self, plans: list[_DocPlan], report: IngestReport, writes: queue.Queue[Any],
                      pending: dict[str, int], stop: threading.Event) -> None:
        """Embed the window's chunks, several requests in flight for a remote embedder
        (``esrag.embedders.inflight``), and hand each document, with its stale chunk ids, to the writer, in
        order. Stops once another stage failed. A failed request fails only its own chunks: each is a
        ``WriteError`` naming its source; the document's other chunks are written and its old chunks kept,
        so the next run embeds exactly the failed ones. Before the first embedding, the embedder's
        fingerprint is checked against the index's (recorded when the index has none)."""
        if not plans:
            return
        self._ensure_index()
        todo = [c for p in plans for c in p.to_embed]
        if todo:
            fingerprint.check_once(self, self.store, self.embedder)
        result = inflight.embed_window(self.embedder.embed_documents, [c.embed_text for c in todo],
                                       inflight.request_size(self.embedder, self.embedder_batch()),
                                       inflight.requests_in_flight(self.embedder), stop)
        if stop.is_set():
            return
        report.chunks_embedded += result.embedded
        failed: dict[str, str] = {}
        for idx, err in result.failed:
            log.warning("embedding %d chunks failed: %s", len(idx), err)
            for i in idx:
                failed[todo[i].id] = f"embedding failed: {err}"
                report.errors.append(WriteError(todo[i].id, todo[i].source, failed[todo[i].id]))
        vec_by_id = {c.id: v for c, v in zip(todo, result.vectors, strict=True) if v is not None}
        for plan in plans:
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

    def _prune(self, scopes: list[tuple[str, bool]], produced: set[str], prune: bool, report: IngestReport,
               read_whole: Mapping[str, bool]) -> None:
        """Count (and with ``prune`` delete) the stored documents under ``scopes`` not produced by this run;
        delete those that are earlier forms of a text file in ``read_whole`` (see the module docstring)."""
        if not self._index_ready and not self._store_exists():
            return
        gone: list[str] = []
        for prefix, is_dir in scopes:
            for doc_id in self.store.list_documents(prefix):
                if doc_id not in produced and (is_dir or doc_id == prefix or doc_id.startswith(prefix + "#")):
                    gone.append(doc_id)
        replaced = sorted({d for d in gone if _superseded(d, read_whole)})
        gone = sorted(set(gone) - set(replaced))
        report.documents_gone = len(gone)
        doomed = replaced + (gone if prune else [])
        if not doomed:
            return
        ids = [r.id for refs in self.store.list_chunks(doomed).values() for r in refs]
        for lo in range(0, len(ids), _WRITE_BATCH * 10):
            report.chunks_deleted += self.store.write([], delete_ids=ids[lo:lo + _WRITE_BATCH * 10]).deleted
        report.documents_removed = len(gone) if prune else 0
        self.store.refresh()


def _superseded(doc_id: str, read_whole: Mapping[str, bool]) -> bool:
    """Whether a stored document that this run did not produce is an earlier form of a text file that it
    read to the end: one of the file's segments, or the whole-file document of a file now in segments."""
    owner = part_owner(doc_id)
    return owner in read_whole if owner is not None else read_whole.get(doc_id, False)


def _scopes(paths: Sequence[str | Path], prefix: str) -> list[tuple[str, bool]]:
    """(doc id prefix, is a directory) of each given path: what ``prune`` may consider."""
    out = []
    for given in paths:
        path = Path(given).expanduser().resolve()
        if path.is_dir():
            out.append((prefix + (path.name + "/" if path.name else ""), True))
        else:
            out.append((prefix + path.name, False))
    return out


def documents_for_path(store: Store, path: str | Path, prefix: str = "") -> list[str]:
    """The doc ids the index holds for a file (all records of a JSON/JSONL file), for ``delete --doc``: the
    most specific of ``loaders.doc_id_candidates`` (with ``prefix``) that the index has, as an exact id
    or as ``<id>#<record>``. [] when none matches. Raises IndexNotFoundError (from ``list_documents``) when
    there is no index."""
    for candidate in doc_id_candidates(path):
        for doc_id in dict.fromkeys([prefix + candidate, candidate]):
            found = [d for d in store.list_documents(doc_id) if d == doc_id or d.startswith(doc_id + "#")]
            if found:
                return sorted(found)
    return []


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


__all__ = ["IngestAborted", "IngestReport", "Ingestor", "SourceFile", "documents_for_path"]
