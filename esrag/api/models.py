"""Request bodies of the API (the response documents live in ``esrag.schemas``, shared with the CLI).

Each field has the bounds the engine and the stores take, so bad input is a 422 naming the field before any
work is done: alpha in [0, 1], k in [1, MAX_K], a non-blank query of at most MAX_QUERY_CHARS, a known mode,
fusion and normalisation, filters and metadata within ``esrag.validation``'s limits, document ids by its
rule. Every body (``CheckedBody``) is first walked whole, unknown fields included: a lone surrogate in any
string or key, or a non-finite number anywhere (Python's JSON parser reads ``NaN`` and ``1e400``), is a 422
naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from esrag import validation as v
from esrag.answering.rag import MAX_ANSWER_K
from esrag.config import Fusion, Mode, Normalization

MAX_K = 1000
MAX_CANDIDATES = 10_000
MAX_QUERY_CHARS = 4096
MAX_BATCH = 1000
#: /v1/chat/completions: messages per request, and characters of all their text together
MAX_CHAT_MESSAGES = 256
MAX_CHAT_CHARS = 65_536

_STRICT = ConfigDict(extra="forbid", strict=True)
#: metadata keys (in documents and filters): letters, digits, and _ - . (a key is a field name in both stores)
Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
#: a string stored or matched as one keyword term (metadata and filter values, source, title)
Term = Annotated[str, StringConstraints(max_length=v.MAX_VALUE_CHARS)]
#: a metadata value as the API takes it: finite numbers, integers that fit 64 bits
MetadataValue = (Term | Annotated[int, Field(ge=v.INT64_MIN, le=v.INT64_MAX)]
                 | Annotated[float, Field(allow_inf_nan=False)] | bool)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def _doc_id(value: str) -> str:
    if (problem := v.doc_id_problem(value)) is not None:
        raise ValueError(f"the document id {problem}")
    return value


#: a document id as written through the API (``esrag.validation.doc_id_problem``)
DocumentId = Annotated[str, AfterValidator(_doc_id)]


def refuse(title: str, problems: list[tuple[v.FieldPath, str]]) -> ValidationError:
    """A pydantic ValidationError with one ``invalid_value`` error per (path, message): raised from a
    validator, it keeps its paths, so the 422 names each field."""
    return ValidationError.from_exception_data(title, [
        InitErrorDetails(type=PydanticCustomError("invalid_value", message), loc=path, input=None)
        for path, message in problems])


class CheckedBody(BaseModel):
    """A request body walked whole before its fields are validated: lone surrogates and non-finite numbers
    are refused at any depth, in any field (``esrag.validation.invalid_values``)."""

    model_config = _STRICT

    @model_validator(mode="before")
    @classmethod
    def _valid_json_values(cls, data: Any) -> Any:
        if problems := v.invalid_values(data):
            raise refuse(cls.__name__, problems)
        return data


def _term_problem(value: Any) -> str | None:
    if isinstance(value, str) and len(value) > v.MAX_VALUE_CHARS:
        return f"has {len(value)} characters; at most {v.MAX_VALUE_CHARS} are allowed"
    return None


def _metadata_values(cls: type[BaseModel], metadata: Any) -> Any:
    """Metadata values, each checked on its own (one precise message, not one per type of the union): a
    string of at most MAX_VALUE_CHARS, an integer within 64 bits, a finite number or a boolean."""
    if not isinstance(metadata, dict):
        return metadata
    problems: list[tuple[v.FieldPath, str]] = []
    for key, value in metadata.items():
        if isinstance(value, bool | float):
            continue
        if isinstance(value, int):
            if not v.INT64_MIN <= value <= v.INT64_MAX:
                problems.append(((key,), f"the integer {value} does not fit in 64 bits (at most {v.INT64_MAX})"))
        elif isinstance(value, str):
            if (problem := _term_problem(value)) is not None:
                problems.append(((key,), problem))
        else:
            problems.append(((key,), f"must be a string, a number or a boolean, not {type(value).__name__}"))
    if problems:
        raise refuse(cls.__name__, problems)
    return metadata


def _filter_values(cls: type[BaseModel], filters: Any) -> Any:
    """Filters checked before their types: a value or a list of values per key, within the limits of
    ``esrag.validation`` (one precise message each)."""
    if not isinstance(filters, dict):
        return filters
    if (problem := v.filters_problem(filters)) is not None:
        raise ValueError(f"the filter {problem}")
    problems: list[tuple[v.FieldPath, str]] = []
    for key, values in filters.items():
        if not isinstance(values, str | list):
            problems.append(((key,), f"must be a string or a list of strings, not {type(values).__name__}"))
            continue
        for i, value in enumerate([values] if isinstance(values, str) else values):
            where = (key,) if isinstance(values, str) else (key, i)
            if not isinstance(value, str):
                problems.append((where, f"must be a string, not {type(value).__name__}"))
            elif (problem := _term_problem(value)) is not None:
                problems.append((where, problem))
    if problems:
        raise refuse(cls.__name__, problems)
    return filters


class RetrievalOptions(CheckedBody):
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
    filters: dict[Key, Term | Annotated[list[Term], Field(max_length=v.MAX_FILTER_VALUES)]] = Field(
        default_factory=dict, max_length=v.MAX_FILTER_KEYS,
        description=f"Metadata equality filters (also doc_id, source, title): different keys must all match, "
                    f"a list matches any of its values. At most {v.MAX_FILTER_KEYS} keys, "
                    f"{v.MAX_FILTER_VALUES} values per key and {v.MAX_FILTER_VALUES_TOTAL} in all.")

    _filters = field_validator("filters", mode="before")(_filter_values)

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


class DocumentBody(CheckedBody):
    """A document to ingest: chunked, embedded (only chunks whose text is new) and written."""

    text: str = Field(min_length=1)
    title: Term = ""
    source: Term | None = Field(None, description="Where it came from (shown in hits). Default: the doc id.")
    metadata: dict[Key, MetadataValue] = Field(default_factory=dict)

    _text = field_validator("text")(_not_blank)
    _metadata = field_validator("metadata", mode="before")(_metadata_values)


class BatchDocument(DocumentBody):
    # the bounds are the id rule's (one message for PUT and POST), shown in the schema
    id: DocumentId = Field(description="The document id (stable across updates); see the id rule in docs/api.md.",
                           json_schema_extra={"minLength": 1, "maxLength": v.MAX_ID_CHARS})


class DocumentBatch(CheckedBody):
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


def _content_chars(content: Any) -> int:
    """Characters of text in a chat message's content (a string, or text parts)."""
    if isinstance(content, str):
        return len(content)
    return sum(len(getattr(p, "text", None) or "") for p in content or [])


def chat_limits(cls: type[BaseModel], messages: list[Any]) -> list[Any]:
    """The chat route's sizes, the ones /v1/ask has: the question (the last user message) at most
    MAX_QUERY_CHARS characters, and the text of all messages at most MAX_CHAT_CHARS; a 422 naming the
    message (``messages.N.content``) or ``messages``."""
    problems: list[tuple[v.FieldPath, str]] = []
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)
    if last_user is not None and (n := _content_chars(messages[last_user].content)) > MAX_QUERY_CHARS:
        problems.append(((last_user, "content"), f"the question (the last user message) has {n} characters; at "
                                                  f"most {MAX_QUERY_CHARS} are allowed, as for /v1/ask"))
    if (total := sum(_content_chars(m.content) for m in messages)) > MAX_CHAT_CHARS:
        problems.append(((), f"the messages hold {total} characters of text; at most {MAX_CHAT_CHARS} are allowed"))
    if problems:
        raise refuse(cls.__name__, problems)
    return messages
