"""Errors as RFC 9457 problem details (``application/problem+json``), with a status that means something.

Every error response of the API is built here: ``{"type", "title", "status", "detail", "instance",
"request_id"}``, plus ``errors`` (one ``{"field", "message"}`` per bad field) for invalid input. esrag's
errors map to statuses by kind (``status_for``); anything unexpected becomes a 500 whose body says only
that, and its traceback goes to the server log under the request id. Secrets never reach a body:
``redact`` removes URL credentials and the configured secret values from every message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from esrag.errors import (
    BulkWriteError,
    ConfigError,
    CorruptStoreError,
    EmbeddingError,
    EsragError,
    GeneratorError,
    IndexNotFoundError,
    ModelMismatchError,
    StoreConnectionError,
    StoreError,
)

PROBLEM_JSON = "application/problem+json"
#: problem ``type`` URIs are relative references into the API documentation
TYPE_BASE = "/docs/problems#"

_HTTP_STATUS = re.compile(r"\(HTTP (\d{3})\)")


class FieldError(BaseModel):
    field: str = Field(description="Where in the request: a body field path (alpha, messages.0.content), "
                                   "a path or query parameter, or a header.")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="A URI reference naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The request path.")
    request_id: str | None = Field(None, description="Also in the X-Request-ID header and the server log.")
    errors: list[FieldError] | None = None


class ApiProblem(Exception):
    """Raised by routes and dependencies for an error that is not an EsragError (auth, a missing document,
    a body too large...)."""

    def __init__(self, status: int, detail: str, kind: str | None = None, headers: dict[str, str] | None = None,
                 errors: Sequence[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or slug(status)
        self.headers = headers or {}
        self.errors = list(errors) if errors else None


def slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


def status_for(error: EsragError) -> tuple[int, str]:
    """The HTTP status and problem kind of an esrag error.

    Bad input: 400; missing index: 404; the index built with another model: 409; the store or an upstream
    (Elasticsearch, the LLM server, a remote embedder) failing or unreachable: 502, or 504 when it timed
    out; Elasticsearch refusing the caller's own API key (pass-through): 403. Anything else: 500.
    """
    message = str(error)
    if isinstance(error, ConfigError):
        return 400, "invalid-request"
    if isinstance(error, IndexNotFoundError):
        return 404, "index-not-found"
    if isinstance(error, ModelMismatchError):
        return 409, "model-mismatch"
    if isinstance(error, CorruptStoreError):
        return 500, "corrupt-store"
    if isinstance(error, BulkWriteError):
        return 502, "write-failed"
    if isinstance(error, StoreConnectionError):
        if "did not answer within" in message:
            return 504, "store-timeout"
        if "(HTTP 401)" in message or "(HTTP 403)" in message:
            return 403, "store-forbidden"
        return 502, "store-unreachable"
    if isinstance(error, StoreError):
        m = _HTTP_STATUS.search(message)
        if m is not None and m.group(1) in ("401", "403"):
            return 403, "store-forbidden"
        return 502, "store-failed"
    if isinstance(error, GeneratorError):
        return (504, "llm-timeout") if "timed out" in message else (502, "llm-failed")
    if isinstance(error, EmbeddingError):
        return 502, "embedding-failed"
    return 500, "internal-error"


def problem_body(status: int, kind: str, detail: str, instance: str | None, request_id: str | None,
                 errors: Sequence[FieldError] | None = None, **extra: Any) -> dict[str, Any]:
    title = HTTPStatus(status).phrase
    body: dict[str, Any] = {"type": TYPE_BASE + kind, "title": title, "status": status, "detail": detail,
                            "instance": instance, "request_id": request_id}
    if errors:
        body["errors"] = [e.model_dump() for e in errors]
    body.update(extra)
    return body


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """pydantic/FastAPI validation errors as ``{"field", "message"}``: ``body.alpha`` reads ``alpha``."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        where = ".".join(loc) or "body"
        message = str(e.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        out.append(FieldError(field=where, message=message))
    return out


#: the responses every route documents (the bodies are problem details)
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": Problem, "description": HTTPStatus(s).phrase,
                "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for s in statuses}
