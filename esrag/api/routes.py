"""The routes: each parses its body, calls one engine method and presents the result.

Blocking routes are sync (``def``), so FastAPI runs them in the thread pool. Responses are serialised once
by pydantic-core (``model_dump_json``); the response models still define the OpenAPI schema.
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor

from esrag import validation
from esrag.answering.rag import finish
from esrag.api import sse
from esrag.api.deps import (
    READ_ERRORS,
    WRITE_ERRORS,
    Reader,
    Service,
    Writer,
    check_generator,
    engine_of,
    instance_of,
    request_id_var,
)
from esrag.api.models import (
    AskBody,
    DeleteResponse,
    DocumentBatch,
    DocumentBody,
    Health,
    IngestResponse,
    Readiness,
    SearchBody,
)
from esrag.api.problems import ApiProblem, FieldError, problem_body, problem_responses, status_for
from esrag.engine import Engine
from esrag.errors import EsragError
from esrag.schemas import AskResponse, SearchResponse, StatusResponse
from esrag.sources.documents import DocumentsSource
from esrag.types import Document

router = APIRouter()
def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


@router.post("/v1/search", response_model=SearchResponse, responses=READ_ERRORS, tags=["search"])
def search(body: SearchBody, request: Request, svc: Reader) -> Response:
    """Hybrid search: BM25 and kNN in one store round trip, fused in the client. The document is the one
    `esrag search --json` prints; with `explain`, `explain.request` is the exact native request."""
    engine = engine_of(svc, request)
    overrides: dict[str, Any] = body.overrides()
    if body.k is not None:
        overrides["k"] = body.k
    result = engine.search(body.query, filters=body.filter_dict(), **overrides)
    info = engine.explain(result) if body.explain else None
    s = engine.settings
    return _json(SearchResponse.of(body.query, result, k=body.k or s.k, rrf_k=body.rrf_k or s.rrf_k, explain=info))


ASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The answer (AskResponse), or with `stream: true` Server-Sent Events: `sources`, "
                         "`delta`..., then `done` (an AskResponse) or `error` (a problem).",
          "content": {"text/event-stream": {"schema": {
              "type": "object", "required": ["event", "data"],
              "properties": {"event": {"type": "string", "enum": ["sources", "delta", "done", "error"]},
                             "data": {"type": "string", "description": "JSON"}}}}}},
    **READ_ERRORS,
}


@router.post("/v1/ask", response_model=AskResponse, responses=ASK_RESPONSES, tags=["ask"])
def ask(body: AskBody, request: Request, svc: Reader) -> Response:
    """Answer a question from the retrieved passages, citing them as [n]; the document is the one
    `esrag ask --json` prints. With an in-process model, concurrent questions queue."""
    check_generator(svc, body.generator, "generator")
    engine = engine_of(svc, request)
    engine.check_plugins(generator=body.generator, need_generator=True)
    overrides: dict[str, Any] = body.overrides()
    if body.k is not None:
        overrides["k"] = body.k
    stream = engine.ask_stream(body.question, generator=body.generator, filters=body.filter_dict(), **overrides)
    if not body.stream:
        return _json(AskResponse.of(finish(stream)))
    path = instance_of(request)

    def failed(e: EsragError) -> dict[str, Any]:
        status, kind = status_for(e)
        return problem_body(status, kind, svc.redact(str(e)), path, request_id_var.get())

    events = sse.answer_events(stream, lambda a: AskResponse.of(a).model_dump(mode="json"), failed)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


DOC_ID_HELP = ("The document id; it may contain `/` (the rest of the path is the id). Send `%2F`-free paths "
               "or use the `?id=` form of this route for ids a URL path cannot carry as is.")
DocIdPath = Annotated[str, Path(description=DOC_ID_HELP)]
DocIdQuery = Annotated[str, Query(description="The document id (percent-encoded as UTF-8).")]
DOCUMENTS = "/v1/documents"


class _RestOfPath(Convertor[str]):
    """Starlette's ``path`` convertor, newlines included (its ``.*`` stops at one): every character of the
    rest of the path is the document id, so an id with a control character gets the id rule's 422, not a
    404 for no route."""

    regex = "[\\s\\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("rest", _RestOfPath())


def _ingest(engine: Engine, docs: list[Document]) -> IngestResponse:
    """Upsert ``docs`` through the engine's one ingest path (a source of documents in memory: nothing is
    pruned)."""
    report = engine.ingest(DocumentsSource(docs, total=len(docs)))
    out = IngestResponse.model_validate(report.to_dict())
    if report.errors:
        raise ApiProblem(502, f"{len(report.errors)} chunk(s) failed to write: {report.errors[0].reason}",
                         "write-failed")
    return out


def _id_problem(status: int, field: str, message: str) -> ApiProblem:
    errors = [FieldError(field=field, message=message)]
    if status == 400:
        return ApiProblem(400, f"{field}: {message}", "invalid-encoding", errors=errors)
    return ApiProblem(422, f"{field}: {message}", "invalid-request", errors=errors)


def request_doc_id(request: Request, field: str, given: str) -> str:
    """The document id a request names, read from the raw bytes the client sent: the rest of the path
    after ``/v1/documents/`` (``field`` "doc_id") or the ``id`` query parameter (``field`` "id").

    The server decodes percent-escapes that are not UTF-8 to U+FFFD, so ``x%FF`` and ``x%FE`` would name
    the same document: such an id is a 400 instead. Also a 422 when the id is empty. ``given`` is the
    decoded value the router found, used when the raw bytes are not available.
    """
    try:
        if field == "id":
            query = request.scope.get("query_string", b"").decode("ascii")
            ids = [v for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True, encoding="utf-8",
                                                        errors="strict") if k == "id"]
            if len(ids) > 1:
                raise _id_problem(422, field, "give one id")
            doc_id = ids[0] if ids else given
        else:
            raw = request.scope.get("raw_path")
            path = urllib.parse.unquote_to_bytes(raw).decode("utf-8") if raw is not None else None
            doc_id = path[path.index(DOCUMENTS + "/") + len(DOCUMENTS) + 1:] if path and DOCUMENTS + "/" in path \
                else given
    except UnicodeError as e:
        raise _id_problem(400, field, "the id is not valid UTF-8 once percent-decoded (each byte sequence must "
                                      "be UTF-8)") from e
    if not doc_id:
        raise _id_problem(422, field, "the document id must not be empty")
    return doc_id


def _writable(request: Request, field: str, given: str) -> str:
    doc_id = request_doc_id(request, field, given)
    if (problem := validation.doc_id_problem(doc_id)) is not None:
        raise _id_problem(422, field, f"the document id {problem}")
    return doc_id


def _put(doc_id: str, body: DocumentBody, request: Request, svc: Service) -> Response:
    engine = engine_of(svc, request)
    doc = Document(doc_id=doc_id, source=body.source or doc_id, text=body.text, title=body.title,
                   metadata=body.metadata)
    return _json(_ingest(engine, [doc]))


def _delete(doc_id: str, request: Request, svc: Service) -> Response:
    deleted = engine_of(svc, request).delete_document(doc_id)
    if deleted == 0:
        raise ApiProblem(404, f"no document {doc_id!r} in the index", "document-not-found")
    return _json(DeleteResponse(doc_id=doc_id, chunks_deleted=deleted))


@router.put(DOCUMENTS + "/{doc_id:rest}", response_model=IngestResponse, responses=WRITE_ERRORS, tags=["documents"])
def put_document(doc_id: DocIdPath, body: DocumentBody, request: Request, svc: Writer) -> Response:
    """Create or replace one document. Incremental: an unchanged document embeds and writes nothing, a
    changed one embeds only its new chunks. The id is the rest of the path (`docs/api.md`); see the id
    rule in the documentation."""
    return _put(_writable(request, "doc_id", doc_id), body, request, svc)


def _only_id(request: Request) -> None:
    """422 naming the first query parameter other than ``id``: a misspelt one (``?ids=``) is refused, not
    ignored, on the routes whose query names the document."""
    extra = next((k for k in request.query_params if k != "id"), None)
    if extra is not None:
        message = f"unknown query parameter {validation.printable(extra)!r}; these routes take only `id`"
        raise ApiProblem(422, f"{validation.printable(extra)}: {message}", "invalid-request",
                         errors=[FieldError(field=validation.printable(extra), message=message)])


@router.put(DOCUMENTS, response_model=IngestResponse, responses=WRITE_ERRORS, tags=["documents"])
def put_document_by_query(id: DocIdQuery, body: DocumentBody, request: Request, svc: Writer) -> Response:  # noqa: A002
    """`PUT /v1/documents/{doc_id}` with the id in the query (`?id=docs%2Fapi.md`); no other parameter."""
    _only_id(request)
    return _put(_writable(request, "id", id), body, request, svc)


@router.post(DOCUMENTS, response_model=IngestResponse, responses=WRITE_ERRORS, tags=["documents"])
def post_documents(body: DocumentBatch, request: Request, svc: Writer) -> Response:
    """Create or replace a batch of documents, through the same incremental path."""
    engine = engine_of(svc, request)
    ids = [d.id for d in body.documents]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ApiProblem(422, f"documents: the id {dup!r} appears more than once", "invalid-request")
    docs = [Document(doc_id=d.id, source=d.source or d.id, text=d.text, title=d.title, metadata=d.metadata)
            for d in body.documents]
    return _json(_ingest(engine, docs))


@router.delete(DOCUMENTS + "/{doc_id:rest}", response_model=DeleteResponse, responses=WRITE_ERRORS,
               tags=["documents"])
def delete_document(doc_id: DocIdPath, request: Request, svc: Writer) -> Response:
    """Delete every chunk of one document; 404 when the index holds none. Any stored id can be deleted,
    also one written before the id rule (the rest of the path is the id)."""
    return _delete(request_doc_id(request, "doc_id", doc_id), request, svc)


@router.delete(DOCUMENTS, response_model=DeleteResponse, responses=WRITE_ERRORS, tags=["documents"])
def delete_document_by_query(id: DocIdQuery, request: Request, svc: Writer) -> Response:  # noqa: A002
    """`DELETE /v1/documents/{doc_id}` with the id in the query (`?id=docs%2Fapi.md`); no other parameter."""
    _only_id(request)
    return _delete(request_doc_id(request, "id", id), request, svc)


@router.get("/v1/status", response_model=StatusResponse, responses=problem_responses(401, 403, 502, 504),
            tags=["status"])
def status(request: Request, svc: Reader) -> Response:
    """What `esrag status --json` shows: store, location, index, model, dims, counts. No secret."""
    info = engine_of(svc, request).status()
    return Response(StatusResponse.of(info).model_dump_json(exclude_unset=True), media_type="application/json")


@router.get("/healthz", response_model=Health, tags=["status"])
async def healthz() -> Health:
    """The process is alive (no I/O)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, tags=["status"])
def readyz(request: Request) -> Response:
    """Ready to serve: the embedding model is loaded (a remote embedder: its server embeds a probe text) and
    the store answers. 503 with the reason when not."""
    svc: Service = request.app.state.service
    store = svc.engine.settings.store_name
    loaded = svc.engine.embedder.loaded
    reason = None
    if svc.load_error is not None:
        reason = svc.load_error
    elif not loaded:
        reason = "the embedding model is still loading"
    else:
        try:
            svc.engine.store.exists()
        except EsragError as e:
            reason = svc.redact(f"the store does not answer: {e}")
        if reason is None:
            try:  # a remote embedder: its server answers (an in-process model is ready once loaded)
                svc.engine.embedder.ready()
            except EsragError as e:
                reason = svc.redact(f"the embedder is not ready: {e}")
    ready = Readiness(ready=reason is None, store=store, model_loaded=loaded, reason=reason)
    return _json(ready, 200 if ready.ready else 503)
