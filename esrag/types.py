"""Frozen dataclasses passed between modules: the currency of esrag.

Nothing here does I/O. Ids and hashes are content-addressed so that re-running an ingest computes the same
ids for the same input, which is what makes incremental ingest and crash recovery exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

MetadataValue = str | int | float | bool
Metadata = Mapping[str, MetadataValue]
#: Filters: field -> accepted values. Different keys are ANDed, values of one key are ORed.
#: Keys ``doc_id``, ``source`` and ``title`` address those fields; any other key addresses ``metadata.<key>``.
Filters = Mapping[str, tuple[str, ...]]

TOP_LEVEL_FILTER_FIELDS = frozenset({"doc_id", "source", "title"})


def sha256_hex(*parts: str) -> str:
    """Hex SHA-256 of the parts joined with NUL, so ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for i, p in enumerate(parts):
        if i:
            h.update(b"\x00")
        h.update(p.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class Heading(NamedTuple):
    """One heading of a document's outline: the offset of its line in the document text, its level (1 is
    the top) and its text."""

    start: int
    level: int
    text: str


@dataclass(frozen=True)
class Document:
    """One source document: a file, a JSONL line, a BEIR corpus entry.

    ``doc_id`` is stable across runs (a normalised path, or the id given in JSONL). ``decode_errors`` counts
    bytes that were not valid UTF-8 and were replaced. ``outline`` holds the headings of a structured
    document (Markdown, reStructuredText, HTML) in text order; chunks do not straddle them, and each
    chunk's embedded text can name the headings above it (see ``esrag.ingest.context``).
    """

    doc_id: str
    source: str
    text: str
    title: str = ""
    metadata: Metadata = field(default_factory=dict)
    decode_errors: int = 0
    outline: tuple[Heading, ...] = ()
    #: the title is the file's name (the content names none): it is not embedded as context, so that
    #: renaming the file re-embeds nothing
    title_is_name: bool = False
    #: a token from the source that changes whenever this document's content does (an Elasticsearch
    #: record's index, primary term and sequence number, with the source's field choices); "" for none.
    #: When set, ``sha`` hashes it instead of the content, so a source can tell an unchanged document
    #: from its version alone, without reading it (``esrag.sources.base.Stub``)
    version: str = ""

    def sha(self, chunker_signature: str = "") -> str:
        """Hash of everything that determines this document's chunks: text, title, metadata, outline and
        the chunking parameters (or, for a document with a ``version``, that version and the chunking
        parameters: ``version_sha``). Equal hashes mean re-ingesting would produce identical chunks."""
        if self.version:
            return version_sha(self.doc_id, self.version, chunker_signature)
        parts = [self.doc_id, self.title, self.text, canonical_json(dict(self.metadata)), chunker_signature]
        if self.outline:
            parts.append(canonical_json([list(h) for h in self.outline]))
        return sha256_hex(*parts)


def version_sha(doc_id: str, version: str, chunker_signature: str = "") -> str:
    """``Document.sha`` of a document that carries a source ``version``: known before its content is read."""
    return sha256_hex(doc_id, "version", version, chunker_signature)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, the unit that is embedded and stored (one ES document per chunk).

    ``start``/``end`` are character offsets into the document text. ``chunk_count`` is the number of chunks
    of the whole document, stored on each chunk so that a store can tell a complete document from one whose
    write was interrupted. ``context`` is what the embedded text adds before ``text`` (title, headings;
    see ``esrag.ingest.context``): it is embedded and stored (not indexed: searches never match it), so that
    ``esrag reindex`` can embed the same text with another model; chunks stored before esrag kept it read
    back with "". ``chunk_sha`` hashes the embedded text, so a vector is reused only for the very text it
    was computed from. ``section`` is the ``chunk_index`` of the
    first chunk of this chunk's section (the part of the document under one heading of its outline; 0 for
    every chunk of a document without headings): search weighs a chunk with its section's opening chunk.
    """

    id: str
    doc_id: str
    source: str
    title: str
    text: str
    chunk_index: int
    chunk_count: int
    start: int
    end: int
    chunk_sha: str
    doc_sha: str
    metadata: Metadata = field(default_factory=dict)
    context: str = ""
    section: int = 0

    @property
    def embed_text(self) -> str:
        """The text the embedder sees: the context, then the chunk."""
        return self.context + self.text

    @staticmethod
    def make_id(doc_id: str, doc_sha: str, chunk_index: int, chunk_sha: str) -> str:
        """Content-addressed chunk id: same document version, position and text give the same id."""
        return sha256_hex(doc_id, doc_sha, str(chunk_index), chunk_sha)[:40]


@dataclass(frozen=True)
class EmbeddedChunk:
    """A chunk with its L2-normalised float32 embedding, ready to write."""

    chunk: Chunk
    embedding: np.ndarray


@dataclass(frozen=True)
class ChunkRef:
    """What a store reports about a stored chunk for incremental ingest (no text, no vector)."""

    id: str
    doc_id: str
    doc_sha: str
    chunk_sha: str
    chunk_count: int


@dataclass(frozen=True)
class DocRef:
    """A stored document as ``Store.list_documents`` reports it: its version hash and chunk count."""

    doc_id: str
    doc_sha: str
    chunks: int


class ScoredChunk(NamedTuple):
    """One result of one retrieval side (BM25 or kNN), with the store's raw score.

    A NamedTuple rather than a dataclass: a hybrid query builds 200 of these, and a frozen dataclass costs
    several times more to construct, which showed up as a third of the client-side query time.
    """

    id: str
    score: float
    doc_id: str
    source: str
    title: str
    text: str
    chunk_index: int
    metadata: Metadata = MappingProxyType({})
    #: the chunk_index its section starts at (Chunk.section); -1: unknown (a chunk written before sections
    #: were recorded), so the chunk stands for itself
    section: int = -1


@dataclass(frozen=True)
class SearchRequest:
    """What the searcher asks a store for: up to ``candidates`` hits per side.

    ``text`` None skips the BM25 side, ``vector`` None skips the kNN side. ``num_candidates`` is the kNN
    graph-search breadth (ES ``num_candidates``); stores with exact search ignore it.
    """

    text: str | None
    vector: np.ndarray | None
    candidates: int
    filters: Filters = field(default_factory=dict)
    num_candidates: int | None = None


@dataclass(frozen=True)
class SearchResponse:
    bm25: list[ScoredChunk]
    dense: list[ScoredChunk]
    took_ms: float = 0.0
    #: how many candidates per side were asked for, when known: a BM25 list shorter than that holds every
    #: chunk that matches the query, which fusion uses (``esrag.retrieval.fusion.normalize``)
    candidates: int | None = None


@dataclass(frozen=True)
class Hit:
    """A fused search result. Raw and normalised per-side scores are kept for ``--explain``.

    A side that did not return this chunk has ``None`` raw score and rank and contributes 0 to the fusion.
    """

    id: str
    doc_id: str
    source: str
    title: str
    text: str
    chunk_index: int
    score: float
    bm25_score: float | None
    dense_score: float | None
    bm25_rank: int | None
    dense_rank: int | None
    bm25_norm: float
    dense_norm: float
    metadata: Metadata = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "doc_id": self.doc_id,
            "source": self.source,
            "title": self.title,
            "chunk_index": self.chunk_index,
            "score": self.score,
            "bm25_score": self.bm25_score,
            "dense_score": self.dense_score,
            "bm25_rank": self.bm25_rank,
            "dense_rank": self.dense_rank,
            "bm25_norm": self.bm25_norm,
            "dense_norm": self.dense_norm,
            "metadata": dict(self.metadata),
            "text": self.text,
        }


@dataclass(frozen=True)
class IndexMeta:
    """What an index was built with. Recorded in ES ``_meta`` (or the SQLite meta table) and checked on
    every open, so that querying with another model is an error rather than silent garbage."""

    model: str
    dims: int
    similarity: str = "cosine"
    normalized: bool = True
    chunk_size: int = 256
    chunk_overlap: int = 32
    esrag_version: str = ""
    #: how each chunk's embedded text was made (esrag.ingest.context); "{text}" for the chunk alone
    embed_template: str = "{text}"
    #: the text analyzer of the BM25 side ("standard", "english", or an ES analyzer's name)
    analyzer: str = "standard"
    #: the model's vectors of fixed probe texts (esrag.embedders.fingerprint); "" for an index made before
    #: fingerprints, which records one on its next ingest
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dims": self.dims,
            "similarity": self.similarity,
            "normalized": self.normalized,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "esrag_version": self.esrag_version,
            "embed_template": self.embed_template,
            "analyzer": self.analyzer,
            "fingerprint": self.fingerprint,
        }

    def build_params(self) -> dict[str, Any]:
        """The parameters that may change on an existing index (the model and dims may not): the chunking,
        the embed template, the analyzer, and the fingerprint (recorded once on an index that has none; a
        different one is refused before it gets here: esrag.embedders.fingerprint)."""
        return {"chunk_size": self.chunk_size, "chunk_overlap": self.chunk_overlap,
                "embed_template": self.embed_template, "analyzer": self.analyzer, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IndexMeta:
        return cls(
            model=str(d["model"]),
            dims=int(d["dims"]),
            similarity=str(d.get("similarity", "cosine")),
            normalized=bool(d.get("normalized", True)),
            chunk_size=int(d.get("chunk_size", 256)),
            chunk_overlap=int(d.get("chunk_overlap", 32)),
            esrag_version=str(d.get("esrag_version", "")),
            embed_template=str(d.get("embed_template", "{text}")),
            analyzer=str(d.get("analyzer", "standard")),
            fingerprint=str(d.get("fingerprint", "")),
        )


@dataclass(frozen=True)
class Counts:
    documents: int
    chunks: int


@dataclass(frozen=True)
class WriteError:
    """One chunk the store failed to write, with the file it came from."""

    chunk_id: str
    source: str
    reason: str
    status: int | None = None


@dataclass(frozen=True)
class WriteResult:
    written: int
    errors: tuple[WriteError, ...] = ()
    deleted: int = 0
