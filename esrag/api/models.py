"""Request bodies of the API (the response documents live in ``esrag.schemas``, shared with the CLI).

Each field has the bounds the engine enforces, so bad input is a 422 naming the field before any work is
done: alpha in [0, 1] (NaN and infinities refused), k in [1, MAX_K], a non-blank query of at most
MAX_QUERY_CHARS, a known mode, fusion and normalisation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from esrag.config import Fusion, Mode, Normalization
from esrag.rag import MAX_ANSWER_K
from esrag.schemas import MetadataValue

MAX_K = 1000
MAX_CANDIDATES = 10_000
MAX_QUERY_CHARS = 4096
MAX_BATCH = 1000

_STRICT = ConfigDict(extra="forbid", strict=True)
#: metadata keys (in documents and filters): letters, digits, and _ - . (a key is a field name in both stores)
Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


class RetrievalOptions(BaseModel):
    """Retrieval options; a missing one takes the server's setting."""

    model_config = _STRICT
    mode: Mode | None = Field(None, description="hybrid (BM25 + kNN), bm25 or dense.")
    alpha: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                description="Dense weight: 0 = pure BM25, 1 = pure kNN.")
    fusion: Fusion | None = None
    normalization: Normalization | None = None
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES, description="Candidates fetched per side.")
    rrf_k: int | None = Field(None, ge=1, le=100_000)
    doc_weight: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Weight of section evidence: each chunk's score on each side is mixed with its "
                    "section's opening chunk's, (1 - w) * own + w * opening; 0 ranks chunks alone.")
    filters: dict[Key, str | list[str]] = Field(
        default_factory=dict,
        description="Metadata equality filters (also doc_id, source, title): different keys must all match, "
                    "a list matches any of its values.")

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in {"mode": self.mode, "alpha": self.alpha, "fusion": self.fusion,
                                  "normalization": self.normalization, "candidates": self.candidates,
                                  "rrf_k": self.rrf_k, "doc_weight": self.doc_weight}.items() if v is not None}

    def filter_dict(self) -> dict[str, tuple[str, ...]]:
        return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in self.filters.items()}


class SearchBody(RetrievalOptions):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int | None = Field(None, ge=1, le=MAX_K, description="Number of hits.")
    explain: bool = Field(False, description="Add the exact native request sent to the store.")

    _query = field_validator("query")(_not_blank)


class AskBody(RetrievalOptions):
    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int | None = Field(None, ge=1, le=MAX_ANSWER_K, description="Passages retrieved for the prompt.")
    stream: bool = Field(False, description="Answer as Server-Sent Events: sources, deltas, done.")
    generator: str | None = Field(
        None, min_length=1, max_length=100,
        description="One of the generators the server offers (esrag serve --generators; `none` for the "
                    "passages only). Default: the server's.")

    _question = field_validator("question")(_not_blank)


class DocumentBody(BaseModel):
    """A document to ingest: chunked, embedded (only chunks whose text is new) and written."""

    model_config = _STRICT
    text: str = Field(min_length=1)
    title: str = ""
    source: str | None = Field(None, description="Where it came from (shown in hits). Default: the doc id.")
    metadata: dict[Key, MetadataValue] = Field(default_factory=dict)

    _text = field_validator("text")(_not_blank)


class BatchDocument(DocumentBody):
    id: str = Field(min_length=1, max_length=512, description="The document id (stable across updates).")


class DocumentBatch(BaseModel):
    model_config = _STRICT
    documents: list[BatchDocument] = Field(min_length=1, max_length=MAX_BATCH)


class IngestResponse(BaseModel):
    """What the ingest did (``esrag ingest --json``'s counts)."""

    model_config = ConfigDict(extra="allow")
    documents: int
    documents_new: int
    documents_changed: int
    documents_unchanged: int
    chunks_written: int
    chunks_embedded: int
    chunks_unchanged: int
    chunks_deleted: int
    errors: list[dict[str, Any]]


class DeleteResponse(BaseModel):
    doc_id: str
    chunks_deleted: int


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    store: str
    model_loaded: bool
    reason: str | None = None
