"""The ASGI app: ``create_app(engine, ...)`` wires the routes to one Engine.

- The lifespan handler starts loading the embedding model in a background thread (``/readyz`` answers 503
  until it is loaded) and closes the engine at shutdown.
- Blocking work runs in sync routes, so in Starlette's thread pool (``threads`` workers); nothing blocks
  the event loop.
- A pure ASGI middleware gives every request an id (the client's ``X-Request-ID`` when it is a short token,
  else a new one), returns it in the ``X-Request-ID`` header and in problem bodies, logs one access line
  with it, and refuses bodies over ``max_body_bytes`` with 413 (by Content-Length, or while reading).
- Every error is a problem details body (``esrag.api.problems``); an unexpected exception is logged with its
  traceback and the request id and answered with a 500 that says only that.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from esrag import __version__
from esrag.api.auth import ApiKeys
from esrag.api.problems import PROBLEM_JSON, ApiProblem, FieldError, field_errors, problem_body, status_for
from esrag.config import SECRETS
from esrag.engine import Engine
from esrag.errors import EsragError
from esrag.redact import redact_text

log = logging.getLogger("esrag.api")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("esrag_request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ES_KEY_HEADER = "X-ES-API-Key"
PASSTHROUGH_CACHE = 16

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class ServerOptions:
    max_body_bytes: int = 10 * 1024 * 1024
    #: accept X-ES-API-Key and query Elasticsearch with the caller's key for that request
    es_key_passthrough: bool = False
    #: load the embedding model at startup (in the background; /readyz waits for it)
    preload: bool = True
    threads: int = 64
    #: the generators a request may name besides the configured one (esrag serve --generators); None:
    #: only the configured generator and ``none``
    generators: tuple[str, ...] | None = None


@dataclass
class Service:
    """What the routes share: the engine, the keys, the options and the model-loading state."""

    engine: Engine
    keys: ApiKeys
    options: ServerOptions
    load_error: str | None = None
    loaded: threading.Event = field(default_factory=threading.Event)
    _derived: OrderedDict[str, Engine] = field(default_factory=OrderedDict)
    _derived_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def secrets(self) -> set[str]:
        s = self.engine.settings
        out = {v for v in (getattr(s, name) for name in SECRETS) if isinstance(v, str)}
        return out | set(self.keys.secrets)

    def redact(self, text: str, extra: tuple[str, ...] = ()) -> str:
        return redact_text(text, self.secrets | set(extra))

    def engine_for(self, es_api_key: str | None) -> Engine:
        """The engine for one request: the shared one, or (pass-through) one whose Elasticsearch client uses
        the caller's API key. Those are cached by key digest, the least recently used closed beyond
        PASSTHROUGH_CACHE."""
        if es_api_key is None:
            return self.engine
        import hashlib

        digest = hashlib.sha256(es_api_key.encode()).hexdigest()
        with self._derived_lock:
            eng = self._derived.get(digest)
            if eng is not None:
                self._derived.move_to_end(digest)
                return eng
            eng = self.engine.with_store_settings(es_api_key=es_api_key)
            self._derived[digest] = eng
            while len(self._derived) > PASSTHROUGH_CACHE:
                _, old = self._derived.popitem(last=False)
                old.close()
            return eng

    def load_model(self) -> None:
        try:
            self.engine.embedder.get()
        except Exception as e:  # noqa: BLE001 - reported by /readyz
            self.load_error = self.redact(f"the embedding model failed to load: {type(e).__name__}: {e}")
            log.error("%s", self.load_error)
        finally:
            self.loaded.set()

    def close(self) -> None:
        with self._derived_lock:
            for eng in self._derived.values():
                eng.close()
            self._derived.clear()
        self.engine.close()


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

    from esrag.api import chat, routes

    app.include_router(routes.router)
    app.include_router(chat.router)
    app.add_middleware(RequestContext, max_body_bytes=service.options.max_body_bytes)  # type: ignore[arg-type]
    return app


def problem_response(request: Request, status: int, kind: str, detail: str,
                     errors: list[FieldError] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    service: Service = request.app.state.service
    extra: dict[str, Any] = {}
    if request.url.path.startswith("/v1/chat/"):
        # OpenAI clients read error.message
        extra["error"] = {"message": service.redact(detail), "type": kind, "param": errors[0].field if errors else None,
                          "code": None}
    body = problem_body(status, kind, service.redact(detail), request.url.path, request_id_var.get(), errors, **extra)
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
        status, kind = status_for(exc)
        if status >= 500:
            log.warning("request %s: %s: %s", request_id_var.get(), type(exc).__name__, service.redact(str(exc)))
        return problem_response(request, status, kind, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem_response(request, exc.status_code, _kind(exc.status_code), detail,
                                headers=dict(exc.headers or {}))


def _kind(status: int) -> str:
    from esrag.api.problems import slug

    return slug(status)


class BodyTooLarge(Exception):
    pass


class RequestContext:
    """Request id, access log line and body size limit, as a pure ASGI middleware (streaming-safe)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status_holder = [0]
        limit = self.max_body_bytes

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await _send_413(scope, send_with_id, rid, limit)
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
                    await _send_problem(scope, send_with_id, rid, 500, "internal-error", detail)
        finally:
            ms = (time.perf_counter() - started) * 1e3
            log.info("%s %s %s %d %.1fms", rid, scope.get("method"), scope.get("path"), status_holder[0], ms)
            request_id_var.reset(token)


def _too_large(limit: int) -> str:
    return f"the request body is larger than the server's limit of {limit} bytes (esrag serve --max-body-bytes)"


async def _send_413(scope: Scope, send: Send, rid: str, limit: int) -> None:
    await _send_problem(scope, send, rid, 413, "body-too-large", _too_large(limit))


async def _send_problem(scope: Scope, send: Send, rid: str, status: int, kind: str, detail: str) -> None:
    import orjson

    body = orjson.dumps(problem_body(status, kind, detail, scope.get("path"), rid))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
