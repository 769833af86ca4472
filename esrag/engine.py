"""The engine: the one place that builds esrag's parts from Settings and the operations the CLI and the
HTTP API share. Both are thin faces of it: they parse, call one method here, and present the result.

Parts come from the plugin registry (``esrag.plugins``) and are built lazily, on first use, once:

- ``store``: the ``esrag.stores`` plugin named by ``settings.store_name``;
- ``embedder``: the ``esrag.embedders`` plugin ``settings.embedder``, wrapped so that its model loads only
  when something is embedded (an unchanged re-ingest or a BM25 search loads no model);
- ``generator(name)``: the ``esrag.generators`` plugin (``none`` means retrieval only), one per name.

Thread safety (the API calls the engine from worker threads):

- building each part is guarded by a lock, so two threads asking at once get the same object;
- ``search``, ``explain``, ``status`` and the read side of ``ask`` may run in any number of threads: the
  stores allow concurrent readers, the embedder serialises its own model calls;
- generation with an in-process model (a generator whose ``concurrent`` attribute is False) runs one answer
  at a time: further ``ask`` calls wait their turn (a queue, not an error), retrieval included;
- ``ingest`` (and its shortcuts ``ingest_paths``/``ingest_documents``) and ``delete_*`` may run while
  searches run; the store serialises writers. One source is ingested by one ``ingest`` at a time.

Round trips: an engine checks that its index exists once, before its first search or answer (so a missing
index is reported before a model loads); after that, a search is one store request (one ``_msearch`` on
Elasticsearch), and an index dropped meanwhile is learnt from that request's own answer, with the same
IndexNotFoundError.

Index versions (``esrag reindex``): reading follows the live version. At the first search the engine reads
the index meta and, unless the model was set explicitly, embeds queries with the model the index records.
After every search it compares the live version with the one its store and searcher were built for (a
stat of the SQLite file; on Elasticsearch the ``_index`` of the hits, so no request is added): when a
reindex swapped it, the result is discarded, the store is opened again, the new version's model and build
parameters are adopted (a new embedder, loaded before it answers) and the search runs again; a store
error during a swap is retried the same way. The old store is closed at the next swap or with the engine,
so searches still running on it finish there. No query vector of one model is answered against
another's index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esrag import plugins
from esrag.config import Settings
from esrag.embedders.lazy import LazyEmbedder
from esrag.errors import ConfigError, IndexNotFoundError, StoreError, setting
from esrag.types import Document, Filters, MetadataValue

if TYPE_CHECKING:
    from esrag.answering.conversation import Standalone
    from esrag.answering.rag import Answer, AnswerStream
    from esrag.generators.base import Generator, Message
    from esrag.ingest.pipeline import Ingestor, IngestReport
    from esrag.lifecycle.reindex import ReindexReport
    from esrag.retrieval.search import HybridSearcher, SearchResult
    from esrag.sources.base import Source
    from esrag.stores.base import Store

NO_GENERATOR = "none"



#: filters as callers give them: a key to one value or to several (any of which matches)
FilterArg = Mapping[str, str | Sequence[str]]

def filter_values(filters: FilterArg | None) -> Filters | None:
    """``filters`` with each value a tuple: a bare string is one value (``{"team": "db"}`` means
    ``{"team": ("db",)}``), never the characters of it."""
    if not filters:
        return None
    return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in filters.items()}

class Engine:
    """esrag's parts and operations for one Settings. Close it (or use it as a context manager) to release
    the store's connections and the generators' models."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._store: Store | None = None
        self._embedder: LazyEmbedder | None = None
        self._searcher: HybridSearcher | None = None
        self._generators: dict[str, Generator] = {}
        self._generation_locks: dict[str, threading.Lock] = {}
        self._shares_parts = False
        self._index_seen = False  # the index existed at the last search or answer
        self._live: str | None = None  # the index version the store and searcher were built for
        self._retired: list[Store] = []  # stores of versions swapped out, closed at the next swap

    def with_store_settings(self, **changes: Any) -> Engine:
        """An engine whose store is built from these changed settings (the API uses it for a caller's own
        Elasticsearch API key) and that shares this engine's embedder, generators and generation locks, so
        nothing is loaded twice and in-process answers still queue. Closing it closes only its store."""
        other = Engine(self.settings.replace(**changes))
        other._lock = self._lock
        other._embedder = self.embedder
        other._generators = self._generators
        other._generation_locks = self._generation_locks
        other._shares_parts = True
        return other

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parts -----------------------------------------------------------------------------------------

    def _once(self, attr: str, build: Callable[[], Any]) -> Any:
        """The part held in ``attr``, built by ``build`` the first time (once, whichever thread asks)."""
        part = getattr(self, attr)
        if part is None:
            with self._lock:
                part = getattr(self, attr)
                if part is None:
                    part = build()
                    setattr(self, attr, part)
        return part

    @property
    def store(self) -> Store:
        return self._once("_store", lambda: plugins.load(plugins.STORES, self.settings.store_name)(self.settings))

    @property
    def embedder(self) -> LazyEmbedder:
        return self._once("_embedder", lambda: LazyEmbedder(plugins.load(plugins.EMBEDDERS, self.settings.embedder),
                                                            self.settings))

    @property
    def searcher(self) -> HybridSearcher:
        from esrag.retrieval.search import HybridSearcher

        return self._once("_searcher", lambda: HybridSearcher(self.store, self.embedder, self.settings))

    def generator_name(self, name: str | None = None) -> str:
        return name or self.settings.generator_name

    def generator(self, name: str | None = None) -> Generator | None:
        """The generator plugin ``name`` (default: the configured one), loaded once; None for ``none``."""
        name = self.generator_name(name)
        if name == NO_GENERATOR:
            return None
        with self._lock:
            g = self._generators.get(name)
            if g is None:
                factory = plugins.load(plugins.GENERATORS, name)
                g = factory(self.settings)
                if getattr(g, "wants_embedder", False):
                    g.embedder = self.embedder  # type: ignore[union-attr]
                self._generators[name] = g
                self._generation_locks[name] = threading.Lock()
            return g

    def check_plugins(self, generator: str | None = None, need_generator: bool = False) -> None:
        """Fail fast, before loading anything, when a configured plugin name is not installed."""
        s = self.settings
        plugins.check(plugins.STORES, s.store_name, _flag(s, "store"))
        plugins.check(plugins.EMBEDDERS, s.embedder, _flag(s, "embedder"))
        if need_generator:
            name = self.generator_name(generator)
            if name != NO_GENERATOR:
                where = setting("generator") if generator else _flag(s, "generator")
                plugins.check(plugins.GENERATORS, name, where, field="generator" if generator else None)

    # -- reading ---------------------------------------------------------------------------------------

    def _index_missing(self) -> IndexNotFoundError:
        where = self.store.describe()
        return IndexNotFoundError(
            f"index {where['index']!r} not found ({where['store']}: {where['location']}); ingest documents "
            f"first, or point {setting('index')} at an existing one")

    def require_index(self) -> None:
        """IndexNotFoundError naming where the index was looked for, when it does not exist."""
        if not self.store.exists():
            raise self._index_missing()

    def _check_index(self) -> None:
        """``require_index``, unless this engine's last search or answer found the index; the first time,
        also adopt the index's model (``_adopt``) and note its live version."""
        if not self._index_seen:
            self.require_index()
            if self._live is None:
                self._adopt(self.store.read_meta(), explicit_wins=True)
                self._live = self._version_token()
            self._index_seen = True

    # -- index versions --------------------------------------------------------------------------------

    def _version_token(self, fresh: bool = False) -> str | None:
        """The store's cheap identity of its live index version (``IndexVersions.token``); None for a store
        without versions."""
        versions = getattr(self._store, "versions", None) if self._store is not None else None
        return versions().token(fresh) if versions is not None else None

    def _swapped(self, fresh: bool = False) -> bool:
        """Whether the live version is no longer the one the store and searcher were built for."""
        if self._live is None:
            self._live = self._version_token()
            return False
        now = self._version_token(fresh)
        return now is not None and now != self._live

    def _adopt(self, meta: Any, explicit_wins: bool = False) -> None:
        """Take the index's recorded model and build parameters (after a swap; at the first search only
        when the model was not set explicitly). A new model means a new embedder, loaded on first use."""
        s = self.settings
        if meta is None or (explicit_wins and "model" in s.sources and s.model != meta.model):
            return
        wanted = {"model": meta.model, "embed_template": meta.embed_template, "chunk_size": meta.chunk_size,
                  "chunk_overlap": meta.chunk_overlap, "analyzer": meta.analyzer}
        if all(getattr(s, k) == v for k, v in wanted.items()):
            return
        self.settings = s.replace(**wanted)
        if s.model != meta.model and not self._shares_parts:
            self._embedder = None
        self._searcher = None

    def _renew(self) -> None:
        """Open the live version again after a swap: a new store, the new meta adopted, a new searcher."""
        with self._lock:
            if not self._swapped(fresh=True):
                return  # another thread renewed already
            for old in self._retired:
                old.close()
            self._retired = [self._store] if self._store is not None else []
            self._store = self._searcher = None
            self._adopt(self.store.read_meta())
            self._live = self._version_token()

    def _reading(self, read: Callable[[], Any]) -> Any:
        """``read()`` (a search, or retrieval for an answer) after the once-per-engine check that the index
        exists; the store's own IndexNotFoundError (the index dropped since) becomes ``require_index``'s."""
        self._check_index()
        for attempt in range(3):
            last = attempt == 2
            try:
                result = read()
            except IndexNotFoundError as e:  # a swap never hides the index: it was dropped
                self._index_seen = False
                raise self._index_missing() from e
            except StoreError:
                if not last and self._swapped(fresh=True):
                    self._renew()
                    continue
                raise
            if not last and self._swapped():
                self._renew()
                continue
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def search(self, query: str, filters: FilterArg | None = None, **overrides: Any) -> SearchResult:
        """Hybrid search, in one store round trip once the engine has seen its index. ``overrides``: k,
        mode, alpha, fusion, normalization, candidates, rrf_k, doc_weight."""
        if not query.strip():
            raise ConfigError("the query is empty", field="query")
        wanted = filter_values(filters)
        result: SearchResult = self._reading(lambda: self.searcher.search(query, filters=wanted, **overrides))
        return result

    def explain(self, result: SearchResult) -> dict[str, Any]:
        return self.searcher.explain(result)

    def ask_stream(self, question: str, generator: str | None = None, filters: FilterArg | None = None,
                   **overrides: Any) -> AnswerStream:
        """Retrieve now (errors surface here) and return a stream that generates as it is iterated.

        With an in-process generator, the stream holds that generator's lock from its first piece until it
        is exhausted or closed, so concurrent answers queue instead of interleaving in one model.
        """
        from esrag.answering.rag import RagPipeline

        self._check_index()  # before a generator loads
        g = self.generator(generator)
        lock = None
        if g is not None and not getattr(g, "concurrent", False):
            lock = self._generation_locks[self.generator_name(generator)]
        if lock is not None:
            lock.acquire()
        try:
            stream = self._reading(
                lambda: RagPipeline(self.searcher, g, self.settings).stream(question, filters=filter_values(filters),
                                                                           **overrides))
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if lock is not None:
            stream = _Locked(stream, lock)  # type: ignore[assignment]
        return stream

    def standalone_question(self, question: str, history: Sequence[Message],
                            generator: str | None = None) -> Standalone:
        """What to retrieve for and answer when ``question`` follows the turns of ``history`` (a chat):
        rewritten by the generator when it can (an LLM server), else with the earlier questions added
        (esrag.answering.conversation)."""
        from esrag.answering.conversation import standalone_question

        return standalone_question(question, history, self.generator(generator))

    def ask(self, question: str, generator: str | None = None, filters: FilterArg | None = None,
            **overrides: Any) -> Answer:
        from esrag.answering.rag import finish

        return finish(self.ask_stream(question, generator, filters, **overrides))

    def status(self) -> dict[str, Any]:
        """What ``esrag status --json`` and ``GET /v1/status`` show: store, location, index (and the concrete
        index behind an ES alias), model, dims, chunking, embed template, analyzer, counts. No secret."""
        store = self.store
        meta = store.read_meta()  # first: it resolves the concrete index behind an ES alias
        info: dict[str, Any] = dict(store.describe())
        info["exists"] = meta is not None
        versions = getattr(store, "versions", None)
        if meta is not None and versions is not None:
            info["versions"] = [{"number": v.number, "name": v.name, "live": v.live, "state": v.state}
                                for v in versions().listing()]
        if meta is not None:
            counts = store.count()
            info.update(model=meta.model, dims=meta.dims, similarity=meta.similarity,
                        chunk_size=meta.chunk_size, chunk_overlap=meta.chunk_overlap,
                        embed_template=meta.embed_template, analyzer=meta.analyzer,
                        esrag_version=meta.esrag_version, documents=counts.documents, chunks=counts.chunks)
            vector_index = getattr(store, "vector_index", None)  # the embedded store's kNN side
            if callable(vector_index):
                info["vector_index"] = vector_index()
        return info

    # -- writing ---------------------------------------------------------------------------------------

    def ingestor(self, progress: bool = False) -> Ingestor:
        from esrag.ingest.pipeline import Ingestor

        return Ingestor(self.store, self.embedder, self.settings, progress=progress)

    def init_index(self) -> tuple[bool, dict[str, Any]]:
        """Create the index if missing; (created, store description)."""
        from esrag.ingest.pipeline import index_meta

        created = self.store.ensure_index(index_meta(self.embedder, self.settings, self.store.read_meta()))
        return created, dict(self.store.describe())

    def source(self, name: str, **options: Any) -> Source:
        """The ``esrag.sources`` plugin ``name`` built with these settings and ``options`` (``files``:
        paths, glob, exclude...; ``elasticsearch``: index, text_fields... see each source). No I/O."""
        source: Source = plugins.load(plugins.SOURCES, name)(self.settings, **options)
        return source

    def ingest(self, source: Source, prune: bool = False, progress: bool = False) -> IngestReport:
        """Ingest ``source`` into the index (see ``esrag.ingest.pipeline``): incremental, and with ``prune`` the
        source's stored documents that are gone from it are deleted (never another source's). Closes the
        source. Raises IngestAborted (with the partial report) when the store or the source fails."""
        try:
            return self.ingestor(progress).ingest(source, prune=prune)
        finally:
            source.close()

    def ingest_paths(self, paths: Sequence[str | Path], glob: Sequence[str] = (), exclude: Sequence[str] = (),
                     metadata: Mapping[str, MetadataValue] | None = None, progress: bool = False,
                     prune: bool = False, **options: Any) -> IngestReport:
        """``ingest`` of the ``files`` source over ``paths`` (options: follow_symlinks, max_file_size,
        doc_prefix)."""
        source = self.source("files", paths=list(paths), glob=glob, exclude=exclude, metadata=metadata, **options)
        return self.ingest(source, prune=prune, progress=progress)

    def ingest_documents(self, docs: Iterable[Document], total: int | None = None,
                         progress: bool = False) -> IngestReport:
        """``ingest`` of documents already loaded (the API, BEIR corpora): upserts, nothing is pruned."""
        from esrag.sources.documents import DocumentsSource

        return self.ingest(DocumentsSource(docs, total=total), progress=progress)

    def delete_documents(self, refs: Sequence[str]) -> int:
        """Delete documents by doc_id or by the file given at ingest (every record of a JSON/JSONL file;
        see ``sources.files.documents_for_path``); returns the chunks deleted."""
        from esrag.sources.files import documents_for_path

        self.require_index()
        ids = sorted({doc_id for r in refs for doc_id in documents_for_path(self.store, r)})
        deleted = self.store.delete_documents(ids) if ids else 0
        self.store.refresh()
        return deleted

    def delete_document(self, doc_id: str) -> int:
        """Delete the chunks of exactly one doc_id (no file-path resolution: the API's id) and make the
        deletion visible to searches; returns the chunks deleted (0 when the index holds none)."""
        self.require_index()
        deleted = self.store.delete_documents([doc_id])
        self.store.refresh()
        return deleted

    def reindexer(self, on_progress: Any = None) -> Any:
        from esrag.embedders.lazy import LazyEmbedder
        from esrag.lifecycle.reindex import Reindexer

        def embedder_for(s: Settings) -> LazyEmbedder:
            if s.model == self.settings.model and s.embedder == self.settings.embedder:
                return self.embedder
            return LazyEmbedder(plugins.load(plugins.EMBEDDERS, s.embedder), s)

        return Reindexer(self.store, self.settings, embedder_for, on_progress)

    def reindex(self, changes: Mapping[str, Any], sources: Sequence[Source | str] = (), delete_old: bool = False,
                force: bool = False, on_progress: Any = None) -> ReindexReport:
        """Build a new version of the index with ``changes`` (settings), check it and swap it in
        (``esrag.lifecycle.reindex``); this engine then reads the new version. ``sources`` (Sources, e.g. from
        ``source``, or paths) are read again instead of the stored chunks: a new chunking needs them.
        ``on_progress(report)`` is called as the new version fills."""
        report: ReindexReport = self.reindexer(on_progress).run(changes, sources, delete_old=delete_old,
                                                                force=force)
        self._after_swap()
        return report

    def rollback(self) -> tuple[str, str]:
        """Make the previous version live again; (from, to)."""
        moved: tuple[str, str] = self.reindexer().rollback()
        self._after_swap()
        return moved

    def _after_swap(self) -> None:
        with self._lock:
            self._index_seen = False
            self._live = None
            if self._store is not None:
                self._retired.append(self._store)
            self._store = self._searcher = None
            self._adopt(self.store.read_meta())

    def drop(self) -> bool:
        """Delete the whole index; whether it existed."""
        return self.store.drop()

    def close(self) -> None:
        with self._lock:
            if not self._shares_parts:
                for g in self._generators.values():
                    g.close()
                self._generators.clear()
            for old in self._retired:
                old.close()
            self._retired = []
            if self._store is not None:
                self._store.close()
                self._store = None
                self._searcher = None
                self._index_seen = False


def _flag(settings: Settings, name: str) -> str:
    """How the user set ``name``: the flag or variable that gave it (for error messages)."""
    return settings.sources.get(name, f"the default {name}")


class _Locked:
    """An AnswerStream that releases its generator's lock when exhausted, closed or collected."""

    def __init__(self, inner: AnswerStream, lock: threading.Lock) -> None:
        self._inner = inner
        self._lock: threading.Lock | None = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._inner)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._release()

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __del__(self) -> None:
        self._release()
