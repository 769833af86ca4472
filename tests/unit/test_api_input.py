"""The API's request models on their own (no server): the whole-body walk, the metadata and filter checks,
the document id rule on batch ids and the chat route's sizes, each error at the path the 422 names."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from esrag.api.chat import ChatCompletionRequest
from esrag.api.models import MAX_CHAT_CHARS, MAX_QUERY_CHARS, DocumentBatch, DocumentBody, SearchBody


def errors(model: Any, data: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(e["loc"], e["msg"].removeprefix("Value error, ")) for e in info.value.errors()]


def test_the_body_walk_names_each_surrogate_and_non_finite_number_in_body_order() -> None:
    assert errors(SearchBody, {"query": "a\ud800", "k": math.nan, "filters": {"k\udc80": "v"}}) == [
        (("query",), "is not valid Unicode: a lone surrogate U+D800 at character 1"),
        (("k",), "must be a finite number, not nan (NaN and infinities are not JSON numbers)"),
        (("filters", "k\\udc80"), "the key is not valid Unicode: a lone surrogate U+DC80 at character 1"),
    ]


def test_metadata_values_get_one_precise_message_each() -> None:
    data = {"text": "t", "metadata": {"ok": 1.5, "n": 2**63, "s": "x" * 8001, "o": {"a": 1}, "b": True, "i": 2**63 - 1}}
    assert errors(DocumentBody, data) == [
        (("metadata", "n"), f"the integer {2**63} does not fit in 64 bits (at most {2**63 - 1})"),
        (("metadata", "s"), "has 8001 characters; at most 8000 are allowed"),
        (("metadata", "o"), "must be a string, a number or a boolean, not dict"),
    ]
    body = DocumentBody.model_validate({"text": "t", "metadata": {"b": True, "n": 3, "x": 2.5, "s": "v"}})
    assert body.metadata == {"b": True, "n": 3, "x": 2.5, "s": "v"}
    assert type(body.metadata["b"]) is bool and type(body.metadata["n"]) is int


def test_filters_are_checked_against_the_stores_limits_first() -> None:
    assert errors(SearchBody, {"query": "q", "filters": {"team": ["v"] * 257}}) == [
        (("filters",), "the filter 'team' has 257 values; at most 256 per key are allowed")]
    assert errors(SearchBody, {"query": "q", "filters": {"team": ["a", 3], "x": 1}}) == [
        (("filters", "team", 1), "must be a string, not int"),
        (("filters", "x"), "must be a string or a list of strings, not int")]
    assert SearchBody.model_validate({"query": "q", "filters": {"a": "1", "b": ["2", "3"]}}).filter_dict() == {
        "a": ("1",), "b": ("2", "3")}


def test_batch_ids_follow_the_document_id_rule() -> None:
    assert errors(DocumentBatch, {"documents": [{"id": "ok/a.md", "text": "t"}, {"id": "a/../b", "text": "t"},
                                                {"id": "x" * 513, "text": "t"}]}) == [
        (("documents", 1, "id"), "the document id has a '..' segment; ids are addressed as URL paths, which "
                                 "resolve these"),
        (("documents", 2, "id"), "the document id is longer than 512 characters (513)"),
    ]


def _chat(*contents: Any, role: str = "user") -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": role, "content": c} for c in contents]}


def test_chat_caps_the_question_and_the_conversation() -> None:
    question = f"the question (the last user message) has {MAX_QUERY_CHARS + 1} characters; at most " \
               f"{MAX_QUERY_CHARS} are allowed, as for /v1/ask"
    assert errors(ChatCompletionRequest, _chat("ok", "q" * (MAX_QUERY_CHARS + 1))) == [
        (("messages", 1, "content"), question)]
    parts = [{"type": "text", "text": "q" * 3000}, {"type": "text", "text": "q" * 3000}]
    assert errors(ChatCompletionRequest, _chat(parts))[0][0] == ("messages", 0, "content")
    history = _chat(*["a" * 4000] * 17, role="assistant")
    history["messages"].append({"role": "user", "content": "and then?"})
    assert errors(ChatCompletionRequest, history) == [
        (("messages",), f"the messages hold {17 * 4000 + 9} characters of text; at most {MAX_CHAT_CHARS} are "
                        "allowed")]
    assert errors(ChatCompletionRequest, {**_chat("q"), "temperature": math.inf})[0][0] == ("temperature",)
    ChatCompletionRequest.model_validate(_chat("q" * MAX_QUERY_CHARS))
