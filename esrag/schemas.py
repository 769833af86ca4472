"""The documents esrag answers with, as pydantic models: one definition for the HTTP API's responses (and so
its OpenAPI schema) and the CLI's ``--json`` output. ``esrag search --json`` prints exactly the
``SearchResponse`` that ``POST /v1/search`` returns, with or without ``--explain``; ``esrag ask --json`` the
``AskResponse`` of ``POST /v1/ask``; ``esrag status --json`` the ``StatusResponse`` of ``GET /v1/status``.

The models read the engine's objects (``SearchResult``, ``Answer``, the status dict) and keep fields they
do not know yet (``extra="allow"``), so that a new field added to an answer reaches clients unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from esrag.answering.rag import Answer
    from esrag.retrieval.search import SearchResult

MetadataValue = str | int | float | bool

_OPEN = ConfigDict(extra="allow")


class HitModel(BaseModel):
    """One fused hit. ``bm25_*``/``dense_*``: the raw store score and 1-based store rank on each side (null
    when that side did not return the chunk) and the normalised score that entered the fusion (of the
    document-weighted score when ``doc_weight`` is above 0)."""

    id: str = Field(description="The chunk id.")
    doc_id: str
    source: str
    title: str
    chunk_index: int
    score: float = Field(description="The fused score (linear: in [0, 1] with minmax; rrf: sum of w/(k+rank)).")
    bm25_score: float | None
    dense_score: float | None
    bm25_rank: int | None
    dense_rank: int | None
    bm25_norm: float
    dense_norm: float
    metadata: dict[str, MetadataValue]
    text: str


class SearchParameters(BaseModel):
    """The parameters the search ran with: the request's, with the server's defaults filled in."""

    k: int
    mode: str
    fusion: str
    alpha: float
    normalization: str
    doc_weight: float = Field(description="Weight of each chunk's section's opening chunk in its score.")
    candidates: int = Field(description="Candidates fetched per side before fusion.")
    rrf_k: int
    filters: dict[str, list[str]]


class SearchResponse(BaseModel):
    """``POST /v1/search`` and ``esrag search --json``."""

    query: str
    hits: list[HitModel]
    parameters: SearchParameters
    timings_ms: dict[str, float] = Field(description="embed_ms, store_ms, fuse_ms.")
    explain: dict[str, Any] | None = Field(
        None, description="With explain: the exact native request sent to the store (for Elasticsearch the "
                          "_msearch body, and a `kibana` text to paste into Dev Tools), mode, fusion, alpha.")

    @classmethod
    def of(cls, query: str, result: SearchResult, k: int, rrf_k: int,
           explain: Mapping[str, Any] | None = None) -> SearchResponse:
        return cls(
            query=query,
            hits=[HitModel(**h.to_dict()) for h in result.hits],
            parameters=SearchParameters(
                k=k, mode=result.mode, fusion=result.fusion, alpha=result.alpha,
                normalization=result.normalization, doc_weight=result.doc_weight,
                candidates=result.request.candidates, rrf_k=rrf_k,
                filters={key: list(v) for key, v in result.request.filters.items()},
            ),
            timings_ms=dict(result.timings_ms),
            explain=dict(explain) if explain is not None else None,
        )


class PassageModel(BaseModel):
    """A retrieved chunk as it was put in the prompt, numbered ``n`` (the [n] the answer cites)."""

    model_config = _OPEN
    n: int
    chunk_id: str
    doc_id: str
    source: str
    title: str
    chunk_index: int
    score: float
    tokens: int
    truncated: bool
    text: str


class CitationModel(BaseModel):
    """One [n] of the answer, mapped to the source it names."""

    model_config = _OPEN
    n: int
    doc_id: str
    source: str
    chunk_id: str
    title: str


class AskResponse(BaseModel):
    """``POST /v1/ask`` (without streaming) and ``esrag ask --json``."""

    model_config = _OPEN
    question: str
    answer: str
    no_context: bool = Field(description="True when nothing relevant was retrieved and the LLM was not called.")
    generator: str | None
    model: str | None
    constrained_citations: bool
    citations: list[CitationModel]
    invalid_citations: list[int] = Field(description="[n] numbers of the answer that name no source.")
    passages: list[PassageModel]
    retrieved: int = Field(description="How many hits retrieval returned (passages: those that fitted).")
    timings: dict[str, float | int | None] = Field(
        description="Milliseconds: retrieval_ms, ttft_ms, generation_ms, total_ms; tokens, tokens_per_s.")

    @classmethod
    def of(cls, answer: Answer) -> AskResponse:
        return cls.model_validate(answer.to_dict())


class IndexVersionInfo(BaseModel):
    """One version of the index: ``<index>-vN`` on Elasticsearch, ``<index>.vN.db`` on SQLite."""

    number: int = Field(description="N, compared as a number.")
    name: str = Field(description="The concrete index or file.")
    live: bool = Field(description="Whether searches read this version now.")
    state: str = Field(description="complete, or building (being filled, or left half-built by a killed reindex).")


class StatusResponse(BaseModel):
    """``GET /v1/status`` and ``esrag status --json``. The counts and the model are present when the index
    exists. Never holds a secret."""

    model_config = _OPEN
    store: str
    location: str
    index: str
    exists: bool
    model: str | None = None
    dims: int | None = None
    documents: int | None = None
    chunks: int | None = None
    versions: list[IndexVersionInfo] | None = Field(
        None, description="The versions of the index (esrag reindex), oldest first; one is live.")

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> StatusResponse:
        return cls.model_validate(dict(status))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)
