"""``POST /v1/chat/completions``: esrag as an OpenAI-compatible RAG model.

The request and response follow OpenAI's Chat Completions shapes, so the official client and chat UIs work
unmodified. The last ``user`` message is the question (text parts of a multi-part content are joined).
The conversation before it decides what is retrieved for a follow-up ("Which command does that?"): the
server's LLM rewrites the question into a standalone one when the generator is ``openai_compat``, else the
earlier user questions are added to it (esrag.answering.conversation); the response's ``esrag.query`` says what was
retrieved for and answered, and ``esrag.query_from`` how (``question``, ``llm`` or ``rule``). Client system
prompts are not used: every answer is grounded in retrieval. ``model`` is ignored for retrieval (the
server's index answers) and echoed back. Sampling options (``temperature``,
``max_tokens``...) are accepted and ignored: the server's generator settings apply.

esrag's extras travel in an ``esrag`` field: in the request (optional, e.g. the openai client's
``extra_body={"esrag": {"k": 3, "filters": {"team": "db"}}}``) the retrieval options of ``/v1/ask``; in the
response the answer's ``citations``, ``passages``, ``no_context`` and ``timings``. When streaming, the first
chunk carries ``esrag.passages`` (the numbered sources) and the chunk with ``finish_reason`` carries
``esrag.citations`` and ``esrag.timings``; ``stream_options.include_usage`` adds OpenAI's usage chunk, and
the stream ends with ``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from esrag.answering.conversation import Standalone
from esrag.answering.rag import MAX_ANSWER_K, finish
from esrag.api import sse
from esrag.api.deps import READ_ERRORS, Reader, check_generator, engine_of, instance_of, request_id_var
from esrag.api.models import MAX_CHAT_MESSAGES, CheckedBody, RetrievalOptions, chat_limits
from esrag.api.problems import ApiProblem, problem_body, status_for
from esrag.errors import EsragError
from esrag.generators.base import Message
from esrag.schemas import AskResponse, CitationModel, PassageModel

router = APIRouter()


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatOptions(RetrievalOptions):
    """esrag's retrieval options for the chat route (the ``esrag`` field of the request)."""

    k: int | None = Field(None, ge=1, le=MAX_ANSWER_K, description="Passages retrieved for the prompt.")
    generator: str | None = Field(None, min_length=1, max_length=100,
                                  description="One of the generators the server offers (esrag serve --generators).")


class ChatCompletionRequest(CheckedBody):
    """OpenAI's Chat Completions request; fields esrag does not use are accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: str = Field(max_length=256, description="Echoed back; the server's index answers.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="Only 1 is supported.")
    temperature: float | None = None
    max_tokens: int | None = None
    esrag: ChatOptions | None = None

    _sizes = field_validator("messages")(chat_limits)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class EsragExtra(BaseModel):
    """Where the answer came from: the passages given to the model (numbered [n]) and the citations of the
    answer mapped to them."""

    model_config = ConfigDict(extra="allow")
    citations: list[CitationModel]
    passages: list[PassageModel]
    no_context: bool
    timings: dict[str, float | int | None]
    query: str = Field(description="What was retrieved for and answered: the last user message, or for a "
                                   "follow-up its standalone form.")
    query_from: Literal["question", "llm", "rule"] = Field(
        description="question: the last user message as it is (nothing came before it); llm: rewritten by the "
                    "server's LLM; rule: the earlier user questions added to it.")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    esrag: EsragExtra


CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A chat.completion, or with `stream: true` Server-Sent Events of chat.completion.chunk "
                         "objects ending with `data: [DONE]`.",
          "content": {"text/event-stream": {"schema": {
              "type": "object", "required": ["data"],
              "properties": {"data": {"type": "string",
                                      "description": "a chat.completion.chunk as JSON, or [DONE]"}}}}}},
    **READ_ERRORS,
}


def _text(m: ChatMessage) -> str:
    if isinstance(m.content, str):
        return m.content
    return "\n".join(p.text for p in m.content or [] if p.type == "text" and p.text)


def conversation_of(messages: list[ChatMessage]) -> tuple[str, list[Message]]:
    """The last user message's text and the user and assistant turns before it (the history a follow-up is
    read in); ApiProblem 422 naming ``messages`` when the last user message has no text."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role != "user":
            continue
        text = _text(messages[i])
        if text.strip():
            history = [Message(m.role, _text(m)) for m in messages[:i] if m.role in ("user", "assistant")]
            return text, history
        break
    raise ApiProblem(422, "messages: the last user message has no text (esrag answers the last user message)",
                     "invalid-request")


def _usage(answer: AskResponse) -> Usage:
    prompt = int(answer.timings.get("prompt_tokens") or 0)
    completion = int(answer.timings.get("tokens") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _extra(answer: AskResponse, asked: Standalone) -> EsragExtra:
    return EsragExtra(citations=answer.citations, passages=answer.passages, no_context=answer.no_context,
                      timings=answer.timings, query=asked.text, query_from=asked.how)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=CHAT_RESPONSES, tags=["chat"])
def chat_completions(body: ChatCompletionRequest, request: Request, svc: Reader) -> Response:
    """OpenAI-compatible chat: the last user message, read in the conversation before it, is answered from
    retrieval, with [n] citations; the sources and citations are in the `esrag` field."""
    question, history = conversation_of(body.messages)
    opts = body.esrag or ChatOptions.model_validate({})
    check_generator(svc, opts.generator, "esrag.generator")
    engine = engine_of(svc, request)
    engine.check_plugins(generator=opts.generator, need_generator=True)
    overrides: dict[str, Any] = opts.overrides()
    if opts.k is not None:
        overrides["k"] = opts.k
    asked = engine.standalone_question(question, history, opts.generator)
    stream = engine.ask_stream(asked.text, generator=opts.generator, filters=opts.filter_dict(), **overrides)
    generator = engine.generator(opts.generator)
    max_new = getattr(generator, "max_new_tokens", None)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def finish_reason(answer: AskResponse) -> Literal["stop", "length"]:
        tokens = answer.timings.get("tokens") or 0
        return "length" if max_new and tokens >= max_new else "stop"

    if not body.stream:
        answer = AskResponse.of(finish(stream))
        completion = ChatCompletion(
            id=cid, created=created, model=body.model, usage=_usage(answer), esrag=_extra(answer, asked),
            choices=[Choice(message=AssistantMessage(content=answer.answer), finish_reason=finish_reason(answer))])
        return Response(completion.model_dump_json(), media_type="application/json")

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    path = instance_of(request)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return sse.event(None, {"id": cid, "object": "chat.completion.chunk", "created": created,
                                "model": body.model, "system_fingerprint": None,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                             "logprobs": None}], **extra})

    async def events() -> AsyncIterator[bytes]:
        passages = [PassageModel(**p.to_dict()).model_dump(mode="json") for p in stream.passages]
        yield chunk({"role": "assistant", "content": ""},
                    esrag={"passages": passages, "query": asked.text, "query_from": asked.how})
        try:
            async for piece in sse.pieces(stream):
                if piece:
                    yield chunk({"content": piece})
        except EsragError as e:
            status, kind = status_for(e)
            problem = problem_body(status, kind, svc.redact(str(e)), path, request_id_var.get())
            problem["error"] = {"message": problem["detail"], "type": kind, "param": None, "code": None}
            yield sse.event(None, problem)
            yield sse.event(None, "[DONE]")
            return
        answer = AskResponse.of(stream.answer)
        yield chunk({}, finish_reason(answer), esrag=_extra(answer, asked).model_dump(mode="json"))
        if include_usage:
            yield sse.event(None, {"id": cid, "object": "chat.completion.chunk", "created": created,
                                   "model": body.model, "system_fingerprint": None, "choices": [],
                                   "usage": _usage(answer).model_dump()})
        yield sse.event(None, "[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
