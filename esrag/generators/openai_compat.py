"""Generation through an OpenAI-compatible chat server: TGI, vLLM, SGLang, llama.cpp, or a hosted endpoint.

Only the Messages API (``POST /v1/chat/completions``) is used, through ``huggingface_hub.InferenceClient``;
the server applies the model's chat template. Nothing server-specific is required: what a server says about
itself (context length, model id) is read best-effort and ignored when missing.

Authentication: ``settings.llm_api_key`` (``ESRAG_LLM_API_KEY``, or ``llm_api_key`` in esrag.toml) is sent as
a bearer token. Without one the placeholder ``EMPTY`` is sent, as the vLLM docs do; esrag deliberately does
*not* fall back to ``HF_TOKEN``/``OPENAI_API_KEY`` or the stored Hugging Face login, because that would send
a personal token to whatever server ``llm_url`` names.

``HF_HUB_OFFLINE=1`` makes huggingface_hub refuse every HTTP request, including ones to your own server. When
it is set, esrag installs (once, process-wide) a client factory that keeps blocking the Hugging Face Hub but
lets requests to other hosts through: offline mode is about the Hub, not about a server on your network.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlparse, urlsplit

from esrag.config import Settings
from esrag.errors import ConfigError, GeneratorError, GeneratorTimeoutError, setting
from esrag.generators.base import DEFAULT_CONTEXT_TOKENS, Generator, Message, messages_to_dicts
from esrag.redact import redact_url

log = logging.getLogger(__name__)

#: Sent as the bearer token when no key is configured (servers without auth ignore it).
NO_KEY = "EMPTY"
#: Seconds allowed for each best-effort metadata request (/v1/models, /props, /info).
PROBE_TIMEOUT_S = 5.0
_HUB_DOMAINS = ("huggingface.co", "hf.co")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_offline_patch_lock = threading.Lock()
_offline_patched = False


def keeps_authorization(old_url: str, new_url: str) -> bool:
    """Whether a redirect from ``old_url`` to ``new_url`` may carry the ``Authorization`` header: only to
    the same host and port, and never from https to http (the key would travel in clear text)."""
    old, new = urlsplit(old_url), urlsplit(new_url)
    if (old.hostname or "").lower() != (new.hostname or "").lower():
        return False
    if old.scheme == "https" and new.scheme != "https":
        return False
    old_port = old.port or _DEFAULT_PORTS.get(old.scheme)
    new_port = new.port or _DEFAULT_PORTS.get(new.scheme)
    return old_port == new_port or (old.scheme, new.scheme) == ("http", "https")


class _AuthSafeRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects with every header of the original request, ``Authorization`` included,
    to any host; this drops it where ``keeps_authorization`` says so."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not keeps_authorization(req.full_url, newurl):
            new.remove_header("Authorization")
            log.debug("redirect from %s to %s: the Authorization header is not sent on", redact_url(
                req.full_url), redact_url(newurl))
        return new


#: The opener of the metadata probes: redirects never hand the API key to another host or to plain http.
_PROBE_OPENER = urllib.request.build_opener(_AuthSafeRedirects)


class OpenAICompatGenerator(Generator):
    """Chat completions from ``settings.llm_url`` (e.g. ``http://localhost:8080``; ``/v1`` is optional).

    ``settings.llm_model`` is sent as the request's ``model``; when unset, the first model the server lists
    at ``/v1/models`` is used (vLLM rejects unknown names; TGI and llama.cpp accept any). ``context_tokens``
    is read lazily from the server (vLLM/SGLang ``max_model_len``, llama.cpp ``/props`` ``n_ctx`` or
    ``n_ctx_train``, TGI ``/info``) and falls back to ``context_tokens`` given here, then to
    ``settings.llm_context_tokens`` when that setting exists, then to 2048.
    """

    name = "openai_compat"
    exact_token_counts = False
    #: a chat's follow-up question is rewritten into a standalone one with ``rewrite`` (esrag.answering.conversation)
    rewrites_questions = True

    def __init__(self, settings: Settings, *, context_tokens: int | None = None) -> None:
        if not settings.llm_url:
            raise ConfigError(f"the openai_compat generator needs a server URL: set {setting('llm_url')}")
        parsed = urlparse(settings.llm_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"invalid LLM server URL {settings.llm_url!r}: expected http(s)://host[:port]")
        self.url = settings.llm_url.rstrip("/")
        self._root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        #: the URL as messages show it: without any user:password it may carry
        self.shown_url = redact_url(self.url)
        self.api_key = settings.llm_api_key or NO_KEY
        self.timeout = float(settings.llm_timeout)
        self.max_new_tokens = settings.max_new_tokens
        self.temperature = settings.temperature
        self.stop: list[str] | None = None
        self._model = settings.llm_model
        self._fallback_context = int(
            context_tokens or getattr(settings, "llm_context_tokens", None) or DEFAULT_CONTEXT_TOKENS
        )
        self._context: int | None = None
        self._probed = False
        self._unreachable = False
        self.last_completion_tokens = None
        if _is_hub_host(parsed.hostname or ""):
            return
        _allow_self_hosted_when_offline()

    # -- what the server says about itself (best effort, once) -------------------------------------------

    @property
    def model(self) -> str:  # type: ignore[override]
        """The model name sent to the server: configured, else the server's first listed model, else ''."""
        if self._model is None:
            self._probe()
        return self._model or ""

    @model.setter
    def model(self, value: str) -> None:
        self._model = value

    @property
    def context_tokens(self) -> int:  # type: ignore[override]
        """The server's context window in tokens (prompt + answer), or the configured fallback."""
        self._probe()
        return self._context or self._fallback_context

    @context_tokens.setter
    def context_tokens(self, value: int) -> None:
        self._context = int(value)

    def _probe(self) -> None:
        """Read model id and context length from the server. Never raises; runs at most once."""
        if self._probed:
            return
        self._probed = True
        models = self._get_json("/v1/models")
        entries = models.get("data") if isinstance(models, dict) else None
        first: dict[str, Any] = entries[0] if isinstance(entries, list) and entries and isinstance(
            entries[0], dict) else {}
        if self._model is None and isinstance(first.get("id"), str):
            self._model = first["id"]
        meta_raw = first.get("meta")
        meta: dict[str, Any] = meta_raw if isinstance(meta_raw, dict) else {}
        context = _positive_int(first.get("max_model_len")) or _positive_int(first.get("context_length"))
        if context is None:
            props = self._get_json("/props")
            settings = props.get("default_generation_settings") if isinstance(props, dict) else None
            context = _positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
            if context is None and isinstance(props, dict):
                context = _positive_int(props.get("n_ctx"))
        if context is None:
            context = _positive_int(meta.get("n_ctx")) or _positive_int(meta.get("n_ctx_train"))
        if context is None:
            info = self._get_json("/info")
            if isinstance(info, dict):
                total = _positive_int(info.get("max_total_tokens"))
                max_input = _positive_int(info.get("max_input_tokens"))
                if total and max_input:
                    context = min(total, max_input + self.max_new_tokens)
                else:
                    context = total
        self._context = context
        log.debug("LLM server %s: model %r, context %s tokens", redact_url(self.url), self._model, context)

    def _get_json(self, path: str) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the URL is the configured LLM server, http(s) only
            self._root + path, headers={"Authorization": f"Bearer {self.api_key}"}
        )
        if self._unreachable:
            return None
        try:
            with _PROBE_OPENER.open(request, timeout=min(PROBE_TIMEOUT_S, self.timeout)) as r:
                return json.loads(r.read(1_000_000))
        except urllib.error.HTTPError as e:  # the server is there, it just lacks this route
            log.debug("LLM server %s%s: HTTP %s", redact_url(self._root), path, e.code)
        except OSError as e:  # refused, unresolvable, timed out: the real request will report it
            log.debug("LLM server %s%s: %s", redact_url(self._root), path, e)
            self._unreachable = True
        except ValueError as e:
            log.debug("LLM server %s%s: not JSON: %s", redact_url(self._root), path, e)
        return None

    # -- generation ------------------------------------------------------------------------------------

    def _client(self) -> Any:
        from huggingface_hub import InferenceClient

        return InferenceClient(base_url=self.url, api_key=self.api_key, timeout=self.timeout)

    def _params(self) -> dict[str, Any]:
        return {"max_tokens": self.max_new_tokens, "temperature": self.temperature, "stop": self.stop,
                "model": self.model or None}

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        """Stream the answer. A failure before or during the stream raises GeneratorError naming the URL,
        with the text received so far in ``partial``. Closing the iterator early closes the connection, which
        makes the server stop generating."""
        self.last_completion_tokens = None
        parts: list[str] = []
        usage_tokens: int | None = None
        client = self._client()
        try:
            chunks = client.chat_completion(messages_to_dicts(messages), stream=True, **self._params())
            for chunk in chunks:
                usage = getattr(chunk, "usage", None)
                if usage is not None and getattr(usage, "completion_tokens", None):
                    usage_tokens = int(usage.completion_tokens)
                for choice in chunk.choices or ():
                    piece = choice.delta.content if choice.delta is not None else None
                    if piece:
                        parts.append(piece)
                        yield piece
        except Exception as e:  # httpx2, huggingface_hub and JSON errors alike: all mean "the server failed"
            self.last_completion_tokens = len(parts)
            raise self._error(e, "".join(parts)) from e
        finally:
            client.close()
        # One streamed chunk carries one token on llama.cpp, TGI and vLLM; servers that report usage win.
        self.last_completion_tokens = usage_tokens or len(parts)

    def generate(self, messages: Sequence[Message]) -> str:
        """One non-streaming request; raises GeneratorError naming the URL on any failure."""
        self.last_completion_tokens = None
        client = self._client()
        try:
            out = client.chat_completion(messages_to_dicts(messages), stream=False, **self._params())
        except Exception as e:
            raise self._error(e, "") from e
        finally:
            client.close()
        if not out.choices:
            raise GeneratorError(f"LLM server {self.shown_url} returned no choices")
        usage = getattr(out, "usage", None)
        text = out.choices[0].message.content or ""
        self.last_completion_tokens = int(usage.completion_tokens) if usage is not None and getattr(
            usage, "completion_tokens", None) is not None else self.count_tokens(text)
        return text

    def rewrite(self, messages: Sequence[Message], max_tokens: int) -> str:
        """One short, deterministic completion (temperature 0, at most ``max_tokens``) for the pipeline's
        own use: a follow-up question rewritten (esrag.answering.conversation). Not an answer: it leaves
        ``last_completion_tokens`` alone. GeneratorError naming the URL on any failure."""
        client = self._client()
        try:
            out = client.chat_completion(messages_to_dicts(messages), stream=False, max_tokens=max_tokens,
                                         temperature=0.0, model=self.model or None)
        except Exception as e:
            raise self._error(e, "") from e
        finally:
            client.close()
        return (out.choices[0].message.content or "") if out.choices else ""

    def _error(self, e: Exception, partial: str) -> GeneratorError:
        """Turn any client-side exception into a GeneratorError that names the server and what went wrong."""
        from huggingface_hub.errors import HfHubHTTPError

        kept = f" ({len(partial)} characters of the answer had arrived and are kept)" if partial else ""
        where = "mid-answer" if partial else "before answering"
        # huggingface_hub raises httpx or httpx2 exceptions depending on the client factory: match by name.
        kinds = {cls.__name__ for cls in type(e).__mro__}
        if kinds & {"InferenceTimeoutError", "TimeoutException", "TimeoutError"}:
            return GeneratorTimeoutError(f"LLM server {self.shown_url} timed out {where} (timeout {self.timeout:g} "
                                         f"s; raise {setting('llm_timeout')}){kept}", partial=partial)
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            status = e.response.status_code
            hint = f"; set {setting('llm_api_key')}" if status in (401, 403) else ""
            msg = f"LLM server {self.shown_url} answered HTTP {status}: {_first_line(e)}{hint}{kept}"
        elif kinds & {"ConnectError", "ConnectionRefusedError"}:
            msg = f"cannot reach the LLM server at {self.shown_url}: {e} (is it running? {setting('llm_url')})"
        elif kinds & {"TransportError", "OSError"}:
            msg = f"LLM server {self.shown_url} dropped the connection {where}: {_first_line(e)}{kept}"
        else:
            msg = f"LLM request to {self.shown_url} failed {where}: {type(e).__name__}: {_first_line(e)}{kept}"
        return GeneratorError(msg, partial=partial)


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _is_hub_host(host: str) -> bool:
    """Whether a host belongs to the Hugging Face Hub (or the configured HF_ENDPOINT mirror)."""
    from huggingface_hub import constants

    host = host.lower()
    hub_hosts = {urlparse(constants.ENDPOINT).hostname or ""}
    return host in hub_hosts or any(host == d or host.endswith("." + d) for d in _HUB_DOMAINS)


def _allow_self_hosted_when_offline() -> None:
    """Under HF_HUB_OFFLINE, let huggingface_hub's shared HTTP client reach non-Hub hosts.

    huggingface_hub's request hook refuses *every* request in offline mode. This wraps the current client
    factory (``set_client_factory``, the documented hook for custom clients) so the refusal only applies
    to Hub hosts. Installed once per process, and only when offline mode is on.
    """
    global _offline_patched
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    if not constants.is_offline_mode():
        return
    with _offline_patch_lock:
        if _offline_patched:
            return
        previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
        hub_hook = _http.hf_request_event_hook

        def hub_only_offline_hook(request: Any) -> Any:
            if _is_hub_host(request.url.host or ""):
                return hub_hook(request)
            return None

        def factory() -> Any:
            client = previous()
            hooks = client.event_hooks
            hooks["request"] = [hub_only_offline_hook if h is hub_hook else h for h in hooks.get("request", [])]
            client.event_hooks = hooks
            return client

        set_client_factory(factory)
        _offline_patched = True
