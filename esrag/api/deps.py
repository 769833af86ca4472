"""What every route shares, with no route in it: the Service (the engine, the API keys, the options and the
model-loading state), the request's context variables, and the FastAPI dependencies that authorise a caller
(``Reader``, ``Writer``), pick the engine for a request (``engine_of``) and check a named generator
(``check_generator``). The app (``esrag.api.app``) and the routers (``routes``, ``chat``) import this
module; it imports none of them, so the package has no import cycle."""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from esrag.api.auth import ApiKeys, Scope
from esrag.api.problems import ApiProblem, FieldError, problem_responses
from esrag.config import SECRETS
from esrag.engine import NO_GENERATOR, Engine
from esrag.redact import redact_text

log = logging.getLogger("esrag.api")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("esrag_request_id", default="-")
#: the credentials the caller sent with this request (bearer token, X-ES-API-Key): masked in what it gets back
request_secrets_var: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("esrag_request_secrets",
                                                                                      default=())
ES_KEY_HEADER = "X-ES-API-Key"
PASSTHROUGH_CACHE = 16


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

    @functools.cached_property
    def secrets(self) -> frozenset[str]:
        """The server's secrets: its API keys and the configured credentials (Elasticsearch, LLM)."""
        s = self.engine.settings
        out = {v for v in (getattr(s, name) for name in SECRETS) if isinstance(v, str)}
        return frozenset(out | set(self.keys.secrets))

    def redact(self, text: str, extra: tuple[str, ...] = ()) -> str:
        """``text`` without URL credentials, the server's secrets, ``extra``, or the credentials the caller
        sent with the current request."""
        return redact_text(text, self.secrets | set(extra) | set(request_secrets_var.get()))

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


def instance_of(request: Request) -> str:
    """The request's path as problem bodies show it (``instance``): redacted like every message."""
    service: Service = request.app.state.service
    return service.redact(request.url.path)


bearer = HTTPBearer(auto_error=False, description="An esrag API key (ESRAG_API_KEYS or --api-key-file).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

READ_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 422, 502, 504)
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 422, 502, 504)


def _authorize(request: Request, credentials: HTTPAuthorizationCredentials | None, needed: Scope) -> Service:
    svc: Service = request.app.state.service
    if not svc.keys.enabled:
        return svc
    challenge = {"WWW-Authenticate": 'Bearer realm="esrag"'}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiProblem(401, "missing API key: send the header `Authorization: Bearer KEY`", "unauthorized",
                         headers=challenge)
    scope = svc.keys.scope_of(credentials.credentials)
    if scope is None:
        raise ApiProblem(401, "the API key is not valid", "unauthorized", headers=challenge)
    if needed is Scope.WRITE and scope is not Scope.WRITE:
        raise ApiProblem(403, "this API key is read-only; writing documents needs a read-write (rw:) key",
                         "forbidden")
    return svc


def reader(request: Request, credentials: Credentials = None) -> Service:
    return _authorize(request, credentials, Scope.READ)


def writer(request: Request, credentials: Credentials = None) -> Service:
    return _authorize(request, credentials, Scope.WRITE)


Reader = Annotated[Service, Depends(reader)]
Writer = Annotated[Service, Depends(writer)]


def engine_of(svc: Service, request: Request) -> Engine:
    """The shared engine, or with X-ES-API-Key (and pass-through on) one that queries ES as the caller."""
    key = request.headers.get(ES_KEY_HEADER)
    if key is None:
        return svc.engine
    if not svc.options.es_key_passthrough:
        raise ApiProblem(400, f"{ES_KEY_HEADER} was sent, but this server does not pass Elasticsearch keys "
                              "through", "passthrough-disabled")
    if svc.engine.settings.store_name != "elasticsearch":
        raise ApiProblem(400, f"{ES_KEY_HEADER} needs the elasticsearch store; this server uses "
                              f"{svc.engine.settings.store_name!r}", "passthrough-disabled")
    key = key.strip()
    if not key or not key.isascii() or any(c.isspace() for c in key):
        raise ApiProblem(400, f"{ES_KEY_HEADER} must be an Elasticsearch API key (base64 id:key)",
                         "invalid-header")
    return svc.engine_for(key)


def offered_generators(svc: Service) -> list[str]:
    """The generators a request may name: the configured one, and those of ``esrag serve --generators``
    (default: ``none``, the passages only)."""
    extra = svc.options.generators if svc.options.generators is not None else (NO_GENERATOR,)
    return sorted({svc.engine.settings.generator_name, *extra})


def check_generator(svc: Service, name: str | None, field: str) -> None:
    """422 naming ``field`` when a request names a generator this server does not offer (loading a model
    is the operator's choice, not a caller's)."""
    if name is None or name == svc.engine.settings.generator_name:
        return
    offered = offered_generators(svc)
    if name not in offered:
        message = (f"this server does not offer the generator {name!r}; it offers {', '.join(offered)} (the "
                   "server's operator chooses which)")
        raise ApiProblem(422, f"{field}: {message}", "invalid-request",
                         errors=[FieldError(field=field, message=message)])
