"""Errors as RFC 9457 problem details (``application/problem+json``), with a status that means something.

Every error response of the API is built here: ``{"type", "title", "status", "detail", "instance",
"request_id"}``, plus ``errors`` (one ``{"field", "message"}`` per bad field) on every 4xx. ``PROBLEM_TYPES``
lists every problem type, each with its one status; ``GET /docs/problems`` serves that list, so each
``type`` URI (``/docs/problems#<name>``) resolves. esrag's errors carry their own status and type
(``EsragError.http_status`` and ``.problem``); anything unexpected becomes a 500 whose body says only that,
and its traceback goes to the server log under the request id. Secrets never reach a body: the app redacts
every message, and the instance, with the configured secrets and the caller's own credentials.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from esrag.errors import EsragError

PROBLEM_JSON = "application/problem+json"
#: problem ``type`` URIs are relative references to the page that lists them (``GET /docs/problems``)
TYPE_BASE = "/docs/problems#"


@dataclass(frozen=True)
class ProblemType:
    """One kind of problem: its one status, the part of the request a 4xx names by default (``errors[].field``
    when nothing more precise is known), and what it means."""

    status: int
    field: str | None
    description: str


#: Every problem type the API answers with. One status per type; a new kind of error gets a new entry.
PROBLEM_TYPES: dict[str, ProblemType] = {
    "invalid-json": ProblemType(400, "body", "The body is not valid JSON."),
    "bad-request": ProblemType(400, "body", "The request cannot be parsed."),
    "invalid-header": ProblemType(400, "X-ES-API-Key", "A header's value is malformed (the field names it)."),
    "invalid-encoding": ProblemType(400, "doc_id", "A document id in the path or query is not UTF-8 once "
                                                   "percent-decoded, so it cannot name one document."),
    "passthrough-disabled": ProblemType(
        400, "X-ES-API-Key", "X-ES-API-Key was sent, but this server does not pass Elasticsearch keys through, "
                             "or does not use Elasticsearch."),
    "unauthorized": ProblemType(401, "Authorization", "No API key, or one the server does not know."),
    "forbidden": ProblemType(403, "Authorization", "The API key is read-only and the route writes."),
    "store-forbidden": ProblemType(
        403, "X-ES-API-Key", "Elasticsearch refused the credentials or their privileges (with pass-through, "
                             "the caller's own key)."),
    "not-found": ProblemType(404, "path", "No route at this path."),
    "index-not-found": ProblemType(404, "path", "The server's index does not exist yet: ingest documents first."),
    "document-not-found": ProblemType(404, "doc_id", "The index holds no document with this id."),
    "method-not-allowed": ProblemType(405, "method", "The route exists, but not with this method."),
    "model-mismatch": ProblemType(
        409, "path", "The index was built with another embedding model or other index settings than the "
                     "server's."),
    "reindex-in-progress": ProblemType(
        409, "path", "The index is being rebuilt (esrag reindex): writes are refused until the new version is "
                     "live; send them again then."),
    "body-too-large": ProblemType(413, "body", "The body is larger than the server's limit."),
    "invalid-request": ProblemType(
        422, "body", "A value is out of bounds, of the wrong type, or refused by the engine; each entry of "
                     "errors names its field."),
    "internal-error": ProblemType(500, None, "Unexpected: the server log has the details under the request id."),
    "missing-dependency": ProblemType(500, None, "The server lacks an optional package the request needs."),
    "load-failed": ProblemType(500, None, "A file the server reads could not be read or parsed."),
    "corrupt-store": ProblemType(500, None, "The store's file is not a valid esrag store."),
    "store-failed": ProblemType(502, None, "The store (Elasticsearch or SQLite) failed."),
    "store-unreachable": ProblemType(502, None, "Elasticsearch cannot be reached."),
    "write-failed": ProblemType(502, None, "Some chunks could not be written."),
    "embedding-failed": ProblemType(502, None, "The embedding model or server failed, or cannot be reached."),
    "llm-failed": ProblemType(502, None, "The LLM server failed or cannot be reached."),
    "store-timeout": ProblemType(504, None, "Elasticsearch did not answer in time."),
    "llm-timeout": ProblemType(504, None, "The LLM server did not answer in time."),
    "embedding-timeout": ProblemType(504, None, "The embedding server did not answer in time."),
    "source-failed": ProblemType(502, None, "An ingest source (such as another Elasticsearch index) is missing, "
                                          "refuses the credentials, or could not be read to the end."),
}

#: the problem type of an HTTP error raised by the framework itself (an unknown route, a wrong method...)
FRAMEWORK_TYPES = {400: "bad-request", 404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}


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
    a body too large...). ``field`` names the part of the request at fault (else the kind's default)."""

    def __init__(self, status: int, detail: str, kind: str | None = None, headers: dict[str, str] | None = None,
                 errors: Sequence[FieldError] | None = None, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or slug(status)
        self.headers = headers or {}
        if errors:
            self.errors: list[FieldError] | None = list(errors)
        else:
            self.errors = [FieldError(field=field, message=detail)] if field else None


def slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


def status_for(error: EsragError) -> tuple[int, str]:
    """The HTTP status and problem type of an esrag error: the class's own (``http_status``, ``problem``).

    Bad input: 422; missing index: 404; the index built with another model: 409; the store or an upstream
    (Elasticsearch, the LLM server, a remote embedder) failing or unreachable: 502, or 504 when it timed
    out; Elasticsearch refusing the caller's own API key (pass-through): 403. Anything else: 500.
    """
    return error.http_status, error.problem


def default_errors(status: int, kind: str, detail: str) -> list[FieldError] | None:
    """The ``errors`` of a 4xx that names no field of its own: one entry, at the kind's default field
    (``body`` for an unknown kind); None for a 5xx."""
    if status >= 500:
        return None
    known = PROBLEM_TYPES.get(kind)
    return [FieldError(field=known.field if known is not None and known.field else "body", message=detail)]


def problem_body(status: int, kind: str, detail: str, instance: str | None, request_id: str | None,
                 errors: Sequence[FieldError] | None = None, **extra: Any) -> dict[str, Any]:
    """A problem details object; a 4xx without ``errors`` gets the kind's default (``default_errors``)."""
    title = HTTPStatus(status).phrase
    body: dict[str, Any] = {"type": TYPE_BASE + kind, "title": title, "status": status, "detail": detail,
                            "instance": instance, "request_id": request_id}
    errors = errors or default_errors(status, kind, detail)
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


def problems_page() -> str:
    """``GET /docs/problems``: every problem type as an HTML table, each row anchored by its name, so that a
    ``type`` URI (``/docs/problems#invalid-request``) resolves to its row."""
    rows = "\n".join(
        f'<tr id="{name}"><td><a href="#{name}"><code>{name}</code></a></td><td>{t.status} '
        f'{html.escape(HTTPStatus(t.status).phrase)}</td><td>{html.escape(t.field or "")}</td>'
        f"<td>{html.escape(t.description)}</td></tr>"
        for name, t in PROBLEM_TYPES.items())
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>esrag API problem types"
            "</title></head><body><h1>esrag API problem types</h1>\n<p>Every error of the API is an RFC 9457 "
            "problem details body whose <code>type</code> is <code>/docs/problems#NAME</code>. A 4xx names the "
            "part of the request at fault in <code>errors[].field</code>; the default field is listed here."
            "</p>\n<table><thead><tr><th>type</th><th>status</th><th>field</th><th>meaning</th></tr></thead>"
            f"<tbody>\n{rows}\n</tbody></table></body></html>\n")
