"""The ASGI app: ``create_app(engine, ...)`` wires the routes to one Engine.

- The lifespan handler starts loading the embedding model in a background thread (``/readyz`` answers 503
  until it is loaded) and closes the engine at shutdown.
- Blocking work runs in sync routes, so in Starlette's thread pool (``threads`` workers); nothing blocks
  the event loop.
- A pure ASGI middleware gives every request an id (the client's ``X-Request-ID`` when it is a plain token
  holding no secret, else a new one), returns it in the ``X-Request-ID`` header and in problem bodies, logs
  one access line with it, and refuses bodies over ``max_body_bytes`` with 413 (by Content-Length, or while
  reading).
- Every error is a problem details body (``esrag.api.problems``); an unexpected exception is logged with its
  traceback and the request id and answered with a 500 that says only that. An esrag error's message names
  settings as this request's JSON fields (``esrag.errors.setting``), else as the server's settings.
- Nothing a caller sends is echoed with a secret in it: the path in ``instance`` and in the access line, and
  every message, are redacted with the server's secrets (its API keys, the Elasticsearch and LLM
  credentials) and the caller's own credentials (its bearer token and ``X-ES-API-Key``). Log lines escape
  control characters (``esrag.logs``), so a path cannot forge one.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from esrag import __version__
from esrag.api import chat, routes
from esrag.api.auth import ApiKeys, bearer_token
from esrag.api.deps import ES_KEY_HEADER, ServerOptions, Service, instance_of, request_id_var, request_secrets_var
from esrag.api.problems import (
    FRAMEWORK_TYPES,
    PROBLEM_JSON,
    ApiProblem,
    FieldError,
    field_errors,
    problem_body,
    problems_page,
    slug,
)
from esrag.engine import Engine
from esrag.errors import EsragError
from esrag.redact import mask_secrets

log = logging.getLogger("esrag.api")
#: a client's X-Request-ID is used when it is a plain token like this (and holds no secret)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def create_app(engine: Engine, keys: ApiKeys | None = None, options: ServerOptions | None = None) -> FastAPI:
    service = Service(engine, keys or ApiKeys(), options or ServerOptions())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = service.options.threads
        if service.options.preload:
            threading.Thread(target=service.load_model, name="esrag-load-model", daemon=True).start()
        else:
            service.loaded.set()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="esrag", version=__version__, lifespan=lifespan,
        description="Hybrid BM25 + dense search and cited answers over Elasticsearch or an embedded SQLite "
                    "store. Errors are RFC 9457 problem details; send `Authorization: Bearer KEY` when the "
                    "server has API keys.",
    )
    app.state.service = service
    _install_error_handlers(app, service)

    app.include_router(routes.router)
    app.include_router(chat.router)

    @app.get("/docs/problems", include_in_schema=False, response_class=HTMLResponse)
    async def problem_types() -> HTMLResponse:
        """The page every problem ``type`` URI points into: each type, its status and meaning."""
        return HTMLResponse(problems_page())

    app.add_middleware(RequestContext, service=service)  # type: ignore[arg-type]
    return app


@functools.lru_cache(maxsize=8)
def _request_fields(path: str) -> dict[str, str]:
    """Setting or argument name -> how the request at ``path`` names it (``alpha`` in /v1/search,
    ``esrag.alpha`` in chat, whose question is ``messages``); empty for a route without such a body."""
    from esrag.api.models import AskBody, RetrievalOptions, SearchBody

    if path == "/v1/search":
        return {n: n for n in SearchBody.model_fields}
    if path == "/v1/ask":
        return {n: n for n in AskBody.model_fields}
    if path.startswith("/v1/chat/"):
        return {**{n: f"esrag.{n}" for n in [*RetrievalOptions.model_fields, "k", "generator"]}, "question": "messages"}
    return {}


def api_wording(error: EsragError, path: str) -> tuple[str, str | None]:
    """An esrag error as the API words it: the message with each setting named as the request's field where
    the request has one (``generator``), else as the server's setting; and the request field at fault."""
    fields = _request_fields(path)
    message = error.worded(lambda name: fields.get(name) or f"the server's {name} setting")
    return message, fields.get(error.field) if error.field else None


def problem_response(request: Request, status: int, kind: str, detail: str,
                     errors: list[FieldError] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    service: Service = request.app.state.service
    detail = service.redact(detail)
    errors = [FieldError(field=e.field, message=service.redact(e.message)) for e in errors] if errors else None
    body = problem_body(status, kind, detail, instance_of(request), request_id_var.get(), errors)
    if request.url.path.startswith("/v1/chat/"):
        # OpenAI clients read error.message; param names the field of a 4xx
        fields = body.get("errors") or [{}]
        body["error"] = {"message": detail, "type": kind, "param": fields[0].get("field"), "code": None}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _install_error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errs):
            return problem_response(request, 400, "invalid-json", "the request body is not valid JSON")
        if "json" not in request.headers.get("content-type", "").lower() and any(
                tuple(e.get("loc", ())) == ("body",) for e in errs):  # curl -d sends a form content type
            message = "the request body must be JSON: send the header `Content-Type: application/json`"
            return problem_response(request, 422, "invalid-request", f"body: {message}",
                                    errors=[FieldError(field="body", message=message)])
        fields = field_errors(errs)
        detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
        return problem_response(request, 422, "invalid-request", detail, errors=fields)

    @app.exception_handler(ApiProblem)
    async def api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(request, exc.status, exc.kind, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(EsragError)
    async def esrag_error(request: Request, exc: EsragError) -> JSONResponse:
        status, kind = exc.http_status, exc.problem
        if status >= 500:
            log.warning("request %s: %s: %s", request_id_var.get(), type(exc).__name__, service.redact(str(exc)))
        detail, field = api_wording(exc, request.url.path)
        errors = [FieldError(field=field, message=detail)] if field and status < 500 else None
        return problem_response(request, status, kind, detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        kind = FRAMEWORK_TYPES.get(exc.status_code) or slug(exc.status_code)
        return problem_response(request, exc.status_code, kind, detail, headers=dict(exc.headers or {}))


def request_id(given: str, secrets: frozenset[str] | tuple[str, ...]) -> str:
    """The id of a request: the client's ``X-Request-ID`` (``given``) when it is a plain token (1 to 64 of
    ``A-Z a-z 0-9 . _ -``) that contains none of ``secrets`` (masked as ``esrag.redact`` masks them), else a new
    random one (32 hex digits)."""
    if _SAFE_ID.match(given) and mask_secrets(given, secrets) == given:
        return given
    return uuid.uuid4().hex


def caller_credentials(headers: dict[str, str]) -> tuple[str, ...]:
    """The credentials a request carries (its bearer token, its ``X-ES-API-Key``), to mask in what it gets
    back and in the log: a caller's key that is not the server's is still a key."""
    found = (bearer_token(headers.get("authorization")), headers.get(ES_KEY_HEADER.lower(), "").strip())
    return tuple(c for c in found if c)


class RequestContext:
    """Request id, access log line and body size limit, as a pure ASGI middleware (streaming-safe)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], service: Service) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = service.options.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        secrets_token = request_secrets_var.set(caller_credentials(headers))
        rid = request_id(headers.get("x-request-id", ""), self.service.secrets | set(request_secrets_var.get()))
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status_holder = [0]
        limit = self.max_body_bytes
        path = self.service.redact(str(scope.get("path", "")))

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await _send_problem(send_with_id, path, rid, 413, "body-too-large", _too_large(limit))
                return
            received = 0

            async def limited_receive() -> MutableMapping[str, Any]:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:  # an HTTPException passes through FastAPI's body parsing as is
                        raise HTTPException(413, _too_large(limit))
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except Exception as exc:  # the last line of defence: logged with the id, never a traceback out
                log.error("request %s: unexpected %s", rid, type(exc).__name__, exc_info=exc)
                if status_holder[0] == 0:
                    detail = (f"unexpected {type(exc).__name__}; the server log has the details under request "
                              f"id {rid}")
                    await _send_problem(send_with_id, path, rid, 500, "internal-error", detail)
        finally:
            ms = (time.perf_counter() - started) * 1e3
            log.info("%s %s %s %d %.1fms", rid, scope.get("method"), path, status_holder[0], ms)
            request_id_var.reset(token)
            request_secrets_var.reset(secrets_token)


def _too_large(limit: int) -> str:
    return f"the request body is larger than the server's limit of {limit} bytes"


async def _send_problem(send: Send, instance: str, rid: str, status: int, kind: str, detail: str) -> None:
    import orjson

    body = orjson.dumps(problem_body(status, kind, detail, instance, rid))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
