"""The index lifecycle: ``esrag reindex`` builds a new version of an index behind the same name, checks it,
and makes it live in one atomic step; ``rollback`` makes the previous version live again.

A reindex, step by step (the store's mechanics are its ``IndexVersions``, ``esrag.stores.base``):

1. **Clean up** what a killed reindex left: a half-built version is deleted, a stale freeze released.
2. **Plan** (``plan``, pure): what the new settings change decides where the content comes from.
   - Only index settings (quantisation/``index_options``, analyzer, similarity): the stored chunks are
     copied with their vectors; nothing is embedded.
   - The model (name and dims; ``model_changed`` is the one place models are compared): the stored text
     is embedded again with the new model, each distinct text (``chunk_sha``) once. The embedded text is
     the chunk with its context (``esrag.ingest.context``), which the stores keep beside the text; it is
     proved by the chunk's ``chunk_sha`` (the hash of the embedded text). For chunks stored before the
     stores kept contexts, it is recovered where the chunk's hash proves it: the chunk alone, or the
     title prefix; a chunk whose context named headings cannot be recovered: the reindex stops and says
     to give the sources (``--from``).
   - The chunking (size, overlap, embed template, which also sizes the chunks): chunks cannot be made
     from chunks, so the documents are read again from the sources given with ``--from`` (an ingest into
     the new version), or the reindex is refused with a message that says so.
3. **Freeze** the live version (writes refused with ReindexInProgressError, searches go on), **fill**
   the new version from a snapshot of the stored chunks (``Store.iter_chunks``: a point in time, or one
   SQLite read transaction), streamed in batches, with the writes in a thread of their own. A copy (the
   model kept) on a store that can copy inside its server (``CopiesVersions``: Elasticsearch's
   ``_reindex``) is that copy instead: no chunk passes through this process.
4. **Verify**: the new version is still the index this reindex created (not deleted, nor made again by
   the server with a guessed mapping: that one is deleted), and holds as many chunks and documents as the
   old one (copy and re-embed); after a re-chunk, every old document is there (extra documents are
   reported). A failed check leaves the new version unswapped, to inspect; the next reindex deletes it.
5. **Swap** (``IndexVersions.promote``) and release the freeze; with ``delete_old``, delete every other
   version.

A reindex killed at any point leaves the live version live and serving: the swap is the last step and
is atomic. Searches run on as before; a running engine notices the swap (``esrag.engine``).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esrag import __version__, plugins
from esrag.config import Settings
from esrag.embedders import fingerprint
from esrag.embedders.base import Embedder
from esrag.errors import ConfigError, CorruptStoreError, EsragError, StoreError
from esrag.ingest.context import ContextTemplate
from esrag.sources.base import Source
from esrag.stores.base import CopiesVersions, IndexVersion, IndexVersions, Store
from esrag.types import EmbeddedChunk, IndexMeta, sha256_hex

#: chunks per snapshot batch (one read, one write)
BATCH = 500
#: the settings a reindex takes (everything else is the engine's)
INDEX_SETTINGS = ("model", "embedder", "analyzer", "index_options", "similarity", "embed_template", "chunk_size",
                  "chunk_overlap", "query_prefix", "passage_prefix")

COPY, EMBED, RECHUNK = "copy", "embed", "rechunk"


@dataclass(frozen=True)
class Plan:
    """Where a reindex's content comes from: ``copy`` (stored chunks and vectors), ``embed`` (stored
    chunks, new vectors) or ``rechunk`` (the sources); ``reasons`` says what changed, one line each."""

    mode: str
    reasons: tuple[str, ...]


@dataclass
class ReindexReport:
    index: str
    old: str | None = None
    new: str | None = None
    mode: str = COPY
    reasons: list[str] = field(default_factory=list)
    chunks: int = 0
    documents: int = 0
    chunks_copied: int = 0
    chunks_embedded: int = 0
    swapped: bool = False
    cleaned: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_changed(old: IndexMeta, new: IndexMeta) -> bool:
    """Whether vectors of ``old`` cannot serve ``new``: the one comparison of embedding models. Another name
    or dims, or (when both record one) fingerprints of different models, even under the same name
    (esrag.embedders.fingerprint): a server that now serves other weights under the old name re-embeds."""
    if (old.model, old.dims) != (new.model, new.dims):
        return True
    return bool(old.fingerprint and new.fingerprint) and not fingerprint.same_model(old.fingerprint,
                                                                                    new.fingerprint)


def plan(old: IndexMeta, new: IndexMeta) -> Plan:
    """What a reindex from ``old`` to ``new`` must do (see the module docstring). Pure."""
    reasons = []
    for name in ("chunk_size", "chunk_overlap", "embed_template"):
        if getattr(old, name) != getattr(new, name):
            reasons.append(f"{name}: {getattr(old, name)!r} -> {getattr(new, name)!r}")
    if reasons:
        return Plan(RECHUNK, tuple(reasons))
    if model_changed(old, new):
        return Plan(EMBED, (f"model: {old.model!r} ({old.dims} dims) -> {new.model!r} ({new.dims} dims)",))
    changed = [f"{n}: {getattr(old, n)!r} -> {getattr(new, n)!r}" for n in ("analyzer", "similarity")
               if getattr(old, n) != getattr(new, n)]
    return Plan(COPY, tuple(changed) or ("index settings only",))


def next_number(versions: Sequence[IndexVersion]) -> int:
    """The number of the next version: one more than the highest, compared as numbers (``v10`` > ``v9``)."""
    return max((v.number for v in versions), default=0) + 1


def embedded_text(chunk: Any, template: ContextTemplate) -> str | None:
    """The text a stored chunk's vector was made from, proved by its ``chunk_sha`` (the hash of that text):
    its stored context and the chunk; for a chunk stored before the stores kept contexts (read with ""),
    the chunk alone or the template's title prefix and the chunk; None when none hashes to it (its context
    named headings)."""
    if chunk.context and sha256_hex(chunk.context + chunk.text) == chunk.chunk_sha:
        return str(chunk.context + chunk.text)
    if sha256_hex(chunk.text) == chunk.chunk_sha:
        return str(chunk.text)
    prefix = template.prefix(chunk.title, ())
    if prefix and sha256_hex(prefix + chunk.text) == chunk.chunk_sha:
        return prefix + str(chunk.text)
    return None


def target_settings(settings: Settings, meta: IndexMeta, changes: Mapping[str, Any]) -> Settings:
    """The settings of the new version: the live index's recorded model and build parameters, the
    engine's other settings, and ``changes`` (the reindex's own flags) over both."""
    base = {"model": meta.model, "embed_template": meta.embed_template, "chunk_size": meta.chunk_size,
            "chunk_overlap": meta.chunk_overlap, "analyzer": meta.analyzer, "similarity": meta.similarity}
    wanted = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(wanted) - set(INDEX_SETTINGS))
    if unknown:
        raise ConfigError(f"a reindex cannot change {', '.join(unknown)}", field=unknown[0])
    return settings.replace(**{**base, **wanted})


class Reindexer:
    """Rebuild, roll back and prune the versions of one store's index (see the module docstring).

    ``embedder_for(settings)`` makes the embedder of a changed model (the engine passes its plugin
    loader); it is called only when the model changes. Not meant to run twice at once on one index: the
    second is refused by the freeze."""

    def __init__(self, store: Store, settings: Settings,
                 embedder_for: Callable[[Settings], Embedder] | None = None,
                 on_progress: Callable[[ReindexReport], None] | None = None) -> None:
        self.store = store
        self.settings = settings
        self._make_embedder = embedder_for or _default_embedder
        self._embedders: dict[tuple[str, str], Embedder] = {}
        self.on_progress = on_progress
        #: copy inside the server when the store can (``CopiesVersions``); False reads and writes every
        #: chunk through this process, as for a re-embed (the benchmark compares the two)
        self.server_copy = True
        #: seconds between two looks at a copy running inside the server
        self.poll_s = 1.0

    def embedder_for(self, s: Settings) -> Embedder:
        """The embedder of ``s`` (its plugin and model), made once per reindexer."""
        key = (s.embedder, s.model)
        if key not in self._embedders:
            self._embedders[key] = self._make_embedder(s)
        return self._embedders[key]

    @property
    def versions(self) -> IndexVersions:
        versions = getattr(self.store, "versions", None)
        if versions is None:
            raise ConfigError(f"the {self.store.name} store cannot be reindexed (it has no index versions)")
        result: IndexVersions = versions()
        return result

    def _live(self) -> tuple[IndexMeta, IndexVersion]:
        meta = self.store.read_meta()
        where = self.store.describe()
        if meta is None:
            raise ConfigError(f"there is no index {where['index']!r} to reindex ({where['store']}: "
                              f"{where['location']}); ingest documents first")
        live = [v for v in self.versions.listing() if v.live]
        if len(live) != 1:
            raise StoreError(f"index {where['index']!r} ({where['location']}) has no single live version "
                             f"({', '.join(v.name for v in live) or 'it is not versioned'}); a reindex needs one")
        return meta, live[0]

    # -- reindex --------------------------------------------------------------------------------------

    def run(self, changes: Mapping[str, Any], sources: Sequence[Source | str] = (), delete_old: bool = False,
            force: bool = False) -> ReindexReport:
        """Build, check and swap in a new version with ``changes`` (settings names -> values); fill it from
        ``sources`` when given (Sources, such as ``Engine.source("elasticsearch", index=...)``, and paths,
        read as one files source: each is ingested into the new version in turn), else from the stored
        chunks. Returns what was done; raises (leaving the live version live) when the plan needs sources
        that were not given, or the new version does not check out (unless ``force``). Closes the sources."""
        given = _as_sources(sources)
        try:
            return self._run(changes, given, delete_old, force)
        finally:
            for source in given:
                source.close()

    def _run(self, changes: Mapping[str, Any], sources: list[Source], delete_old: bool,
             force: bool) -> ReindexReport:
        start = time.perf_counter()
        report = ReindexReport(index=str(self.store.describe()["index"]))
        versions = self.versions
        report.cleaned = versions.cleanup()
        old_meta, live = self._live()
        report.old = live.name
        new_settings = target_settings(self.settings, old_meta, changes)
        new_meta = self._target_meta(old_meta, new_settings)
        p = plan(old_meta, new_meta)
        report.mode, report.reasons = ("rechunk" if sources else p.mode), list(p.reasons)
        if p.mode == RECHUNK and not sources:
            raise ConfigError(
                f"this reindex changes the chunking ({'; '.join(p.reasons)}): chunks cannot be cut again from "
                f"chunks, so give the original sources with --from PATH or --from-index NAME (as given to "
                f"`esrag ingest`)")
        number = next_number(versions.listing())
        with versions.freeze(f"version {number}"):
            target = versions.open(number, new_settings)
            try:
                report.new = str(target.describe()["index"])
                if sources:
                    self._from_sources(target, new_settings, sources, report)
                else:
                    target.ensure_index(new_meta)
                    if p.mode == COPY and self.server_copy and isinstance(self.store, CopiesVersions):
                        self._server_copy(self.store, target, report)
                    else:
                        self._from_chunks(target, new_meta, new_settings, report, reembed=p.mode == EMBED)
                self._check_target(target, number, report)
                target.refresh()
                self._verify(target, report, by_documents=bool(sources), force=force)
            finally:
                target.close()
            versions.promote(number)
            report.new = next(v.name for v in versions.listing() if v.number == number)
            report.swapped = True
        if delete_old:
            report.deleted = self.delete_old()
        report.seconds = time.perf_counter() - start
        return report

    def _target_meta(self, old: IndexMeta, s: Settings) -> IndexMeta:
        """The new version's meta. Its model's dims and fingerprint are read from the new embedder only when
        the model or embedder changes (loading it); otherwise the old ones stand (nothing is loaded)."""
        dims, fp = old.dims, old.fingerprint
        if s.model != old.model or s.embedder != self.settings.embedder:
            embedder = self.embedder_for(s)
            dims, fp = embedder.dims, fingerprint.compute(embedder)
        return IndexMeta(model=s.model, dims=dims, similarity=s.similarity, normalized=True,
                         chunk_size=s.chunk_size, chunk_overlap=s.chunk_overlap, esrag_version=__version__,
                         embed_template=s.embed_template, analyzer=s.analyzer, fingerprint=fp)

    def _from_sources(self, target: Store, s: Settings, sources: Sequence[Source], report: ReindexReport) -> None:
        """Ingest each source in turn into ``target`` with the new settings (``Ingestor.ingest``)."""
        from esrag.ingest.pipeline import Ingestor

        ingestor = Ingestor(target, self.embedder_for(s), s)
        for source in sources:
            ingest = ingestor.ingest(source)
            if ingest.errors:
                raise StoreError(f"{len(ingest.errors)} chunk(s) of the {source.name} source failed to write to "
                                 f"{report.new}: {ingest.errors[0].reason}")
            report.chunks_embedded += ingest.chunks_embedded
            report.chunks_copied += ingest.chunks_reused

    def _from_chunks(self, target: Store, meta: IndexMeta, s: Settings, report: ReindexReport,
                     reembed: bool) -> None:
        """Stream the live version's chunks into ``target``, re-embedding them with ``reembed``; the writes
        run in a thread of their own, one batch behind the reads (and the embedding)."""
        embedder = self.embedder_for(s) if reembed else None
        template = ContextTemplate(meta.embed_template)
        done: set[str] = set()  # chunk_shas embedded (and written) so far
        inbox: queue.Queue[Any] = queue.Queue(maxsize=2)
        failures: list[BaseException] = []

        def write() -> None:
            while (batch := inbox.get()) is not None:
                if failures:
                    continue
                try:
                    result = target.write(batch)
                    if result.errors:
                        raise StoreError(f"{len(result.errors)} chunk(s) failed to write to {report.new}: "
                                         f"{result.errors[0].reason}")
                    report.chunks_copied += 0 if reembed else result.written
                except BaseException as e:
                    failures.append(e)

        writer = threading.Thread(target=write, name="esrag-reindex-write", daemon=True)
        writer.start()
        stream = self.store.iter_chunks(BATCH)
        try:
            for batch in stream:
                if failures:
                    break
                if embedder is not None:
                    batch = self._embed(batch, embedder, template, done, target, report)
                inbox.put(batch)
                if self.on_progress:
                    self.on_progress(report)
        finally:
            _close(stream)
            inbox.put(None)
            writer.join()
        if failures:
            raise failures[0]

    def _server_copy(self, copier: CopiesVersions, target: Store, report: ReindexReport) -> None:
        """Copy the live version's chunks into ``target`` inside the server (``CopiesVersions.copy_to``):
        progress is the copy's (``chunks_copied``), and nothing passes through this process."""
        def progress(done: int, total: int) -> None:
            report.chunks_copied = done
            if self.on_progress:
                self.on_progress(report)

        result = copier.copy_to(target, progress, poll_s=self.poll_s)
        report.chunks_copied = result.copied
        report.notes.append(f"copied inside the server (task {result.task}"
                            + ("" if result.recorded else ", of which the server keeps no record: checked by "
                               "the counts") + ")")

    def _check_target(self, target: Store, number: int, report: ReindexReport) -> None:
        """The new version is still the index this reindex created: not deleted meanwhile, nor made again
        by a write that reached it after (Elasticsearch creates a missing index with a mapping it guesses,
        which is deleted here: it is no version of esrag's). StoreError naming it otherwise."""
        try:
            meta = target.read_meta()
        except CorruptStoreError as e:
            self.versions.delete(number)
            raise StoreError(f"the new version {report.new} was deleted while it was built (the server made it "
                             f"again, with a mapping it guessed, for the chunks written after); it is deleted, "
                             f"and {report.old} stays live: run the reindex again") from e
        if meta is None:
            raise StoreError(f"the new version {report.new} was deleted while it was built; {report.old} stays "
                             f"live: run the reindex again")

    def _embed(self, batch: list[EmbeddedChunk], embedder: Embedder, template: ContextTemplate, done: set[str],
               target: Store, report: ReindexReport) -> list[EmbeddedChunk]:
        """The batch with vectors of the new model: each text not embedded before in this run is embedded
        once (longest first, in the embedder's batches); a text embedded in an earlier batch reuses the
        vector written then."""
        texts: dict[str, str] = {}
        for ec in batch:
            c = ec.chunk
            if c.chunk_sha in done or c.chunk_sha in texts:
                continue
            text = embedded_text(c, template)
            if text is None:
                raise ConfigError(
                    f"chunk {c.id} of {c.source!r} was embedded with a context (its heading path) that the index "
                    f"does not hold (it was stored before esrag kept contexts), so it cannot be embedded again "
                    f"from the index alone: give the original sources with --from PATH or --from-index NAME "
                    f"(as given to `esrag ingest`), or ingest them again first")
            texts[c.chunk_sha] = text
        shas = sorted(texts, key=lambda sha: len(texts[sha]), reverse=True)
        vectors: dict[str, np.ndarray] = {}
        step = max(1, self.settings.batch_size)
        for lo in range(0, len(shas), step):
            part = shas[lo:lo + step]
            for sha, vec in zip(part, embedder.embed_documents([texts[sha] for sha in part]), strict=True):
                vectors[sha] = np.asarray(vec, dtype=np.float32)
        report.chunks_embedded += len(shas)
        earlier = sorted({ec.chunk.chunk_sha for ec in batch} - set(vectors))
        if earlier:  # embedded in an earlier batch: read back what was written (after it was)
            target.refresh()
            vectors.update(target.get_embeddings_by_sha(earlier))
        done.update(shas)
        return [EmbeddedChunk(ec.chunk, vectors[ec.chunk.chunk_sha]) for ec in batch]

    def _verify(self, target: Store, report: ReindexReport, by_documents: bool, force: bool) -> None:
        old, new = self.store.count(), target.count()
        report.chunks, report.documents = new.chunks, new.documents
        problems = []
        if by_documents:
            before, after = set(self.store.list_documents()), set(target.list_documents())
            missing, extra = sorted(before - after), sorted(after - before)
            if extra:
                report.notes.append(f"{len(extra)} document(s) are new in the sources (e.g. {extra[0]!r})")
            if missing:
                problems.append(f"{len(missing)} document(s) of the live index are not in the sources given "
                                f"(e.g. {', '.join(repr(m) for m in missing[:3])})")
            report.notes.append(f"chunks: {old.chunks} -> {new.chunks} (new chunking)")
        elif (old.chunks, old.documents) != (new.chunks, new.documents):
            problems.append(f"the new version holds {new.chunks} chunks of {new.documents} documents, the live "
                            f"one {old.chunks} of {old.documents}")
        if problems and not force:
            raise StoreError(f"the new version {report.new} does not match the live one: {'; '.join(problems)}; "
                             f"it is kept, unswapped, to inspect (the next reindex deletes it; --force swaps "
                             f"anyway)")
        report.notes.extend(f"swapped despite: {p}" for p in problems)

    # -- other operations -----------------------------------------------------------------------------

    def rollback(self) -> tuple[str, str]:
        """Make the newest complete version older than the live one live again; (from, to) names."""
        _, live = self._live()
        older = [v for v in self.versions.listing() if v.number < live.number and v.state == "complete"]
        if not older:
            raise ConfigError(f"there is no version of {self.store.describe()['index']!r} older than the live "
                              f"{live.name} to roll back to")
        self.versions.promote(older[-1].number)
        return live.name, older[-1].name

    def delete_old(self) -> list[str]:
        """Delete every version that is not live; the names deleted."""
        deleted = []
        for v in self.versions.listing():
            if not v.live:
                self.versions.delete(v.number)
                deleted.append(v.name)
        return deleted

    def abort(self) -> list[str]:
        """Clean up after a reindex that died (``IndexVersions.cleanup``, forced: the caller says it died)."""
        return self.versions.cleanup(force=True)


def _default_embedder(s: Settings) -> Embedder:
    from esrag.embedders.lazy import LazyEmbedder

    return LazyEmbedder(plugins.load(plugins.EMBEDDERS, s.embedder), s)


def _as_sources(sources: Sequence[Source | str]) -> list[Source]:
    """``sources`` as Sources: the paths among them become one files source, after the others."""
    from esrag.sources.files import FilesSource

    paths = [str(x) for x in sources if isinstance(x, str)]
    return [x for x in sources if not isinstance(x, str)] + ([FilesSource(paths)] if paths else [])


def _close(stream: Iterator[Any]) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        try:
            close()
        except EsragError:
            pass


__all__ = ["Plan", "ReindexReport", "Reindexer", "embedded_text", "model_changed", "next_number", "plan",
           "target_settings"]
