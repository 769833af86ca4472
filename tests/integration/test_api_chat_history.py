"""What a chat UI sends: the whole conversation. With the official ``openai`` client against ``esrag serve``
(each store), a follow-up is retrieved for with the conversation before it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.fixtures.api import ApiServer, store_args

pytestmark = pytest.mark.integration

KEYS = "How often are the keys rotated?"
FOLLOW = "Which command does that?"
DOCS = {
    "keys": "The API keys are rotated every 90 days with `vault rotate`, as often as the platform team's "
            "schedule says.",
    "backup": "The `backup` command copies the database every night. Run the command by hand before upgrades.",
    "deploy": "The `deploy` command ships a release to production; run the command from the release branch.",
    "alerts": "Alerts page the on-call engineer when the error rate rises above one percent.",
}


@pytest.fixture
def server(serve: Callable[..., ApiServer], store_name: str, store_settings: Callable[..., object]) -> ApiServer:
    """A server over a fresh index of the parametrised store holding DOCS, answering extractively."""
    api = serve(*store_args(store_name, store_settings()), "--embedder", "hashed", "--generator", "extractive")
    docs = [{"id": k, "text": v, "title": k.title()} for k, v in DOCS.items()]
    assert httpx.post(f"{api.url}/v1/documents", json={"documents": docs}, timeout=60).status_code == 200
    return api


def esrag_of(completion: Any) -> dict[str, Any]:
    extra: dict[str, Any] = completion.model_extra["esrag"]
    return extra


def test_a_follow_up_retrieves_the_right_document_only_thanks_to_the_history(server: ApiServer) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="not-needed-on-loopback")
    messages: list[Any] = [{"role": "user", "content": KEYS}]
    first = client.chat.completions.create(model="esrag", messages=messages)
    assert esrag_of(first)["passages"][0]["doc_id"] == "keys"
    assert esrag_of(first)["query"] == KEYS and esrag_of(first)["query_from"] == "question"

    alone = client.chat.completions.create(model="esrag", messages=[{"role": "user", "content": FOLLOW}])
    assert esrag_of(alone)["passages"][0]["doc_id"] != "keys"  # without the history: about commands

    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": FOLLOW}]
    second = client.chat.completions.create(model="esrag", messages=messages)
    extra = esrag_of(second)
    assert extra["query_from"] == "rule" and extra["query"] == f"{KEYS}\n{FOLLOW}"
    assert extra["passages"][0]["doc_id"] == "keys"
    assert [c["doc_id"] for c in extra["citations"]][:1] == ["keys"]
    assert "`vault rotate`" in (second.choices[0].message.content or "")

    chunks = list(client.chat.completions.create(model="esrag", messages=messages, stream=True))
    opening = chunks[0].model_extra["esrag"]  # type: ignore[index]
    assert opening["query"] == extra["query"] and opening["passages"][0]["doc_id"] == "keys"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == second.choices[0].message.content


def test_a_standalone_second_question_is_retrieved_as_it_is(server: ApiServer) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="not-needed-on-loopback")
    r = client.chat.completions.create(model="esrag", messages=[
        {"role": "user", "content": KEYS}, {"role": "assistant", "content": "Every 90 days [1]."},
        {"role": "user", "content": "When do alerts page the on-call engineer?"}])
    assert esrag_of(r)["query_from"] == "question" and esrag_of(r)["passages"][0]["doc_id"] == "alerts"


def test_with_an_llm_the_follow_up_is_rewritten_or_the_rule_applies(
        serve: Callable[..., ApiServer], tmp_path: Path, llm_server_url: str) -> None:
    """openai_compat asks the LLM server (SmolLM2-135M on llama.cpp) for a standalone question; this model
    is too small to rewrite, so its reply is refused and the rule answers instead: the sources are right
    either way, and the server log says why."""
    api = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "openai_compat",
                "--llm-url", llm_server_url, "--max-new-tokens", "16", "--log-level", "debug")
    docs = [{"id": k, "text": v} for k, v in DOCS.items()]
    assert httpx.post(f"{api.url}/v1/documents", json={"documents": docs}, timeout=60).status_code == 200
    client = OpenAI(base_url=f"{api.url}/v1", api_key="not-needed-on-loopback", timeout=300)
    r = client.chat.completions.create(model="esrag", messages=[
        {"role": "user", "content": KEYS}, {"role": "assistant", "content": "Every 90 days [1]."},
        {"role": "user", "content": FOLLOW}])
    extra = esrag_of(r)
    assert extra["query_from"] in ("llm", "rule")
    if extra["query_from"] == "rule":
        assert "rewrite of a follow-up question was not usable" in api.log()
    assert extra["passages"][0]["doc_id"] == "keys", extra["query"]
