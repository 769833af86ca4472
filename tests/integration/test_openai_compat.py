"""OpenAICompatGenerator against a real llama.cpp server (SmolLM2-135M): answers, streams, and fails
clearly when the server is missing, slow, broken, or dies mid-answer."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from esrag.config import Settings
from esrag.errors import GeneratorError
from esrag.generators.base import Message
from esrag.generators.openai_compat import OpenAICompatGenerator
from tests.fixtures.es import free_port
from tests.fixtures.llm import LlamaServer

pytestmark = pytest.mark.integration

QUESTION = [Message("system", "Answer briefly."), Message("user", "What is the capital of France?")]
LONG = [Message("user", "Write a very long story about a dragon who learns to bake bread. Use many chapters.")]


def generator(url: str, **settings: object) -> OpenAICompatGenerator:
    base: dict[str, object] = {"llm_url": url, "max_new_tokens": 32, "temperature": 0.0}
    base.update(settings)
    return OpenAICompatGenerator(Settings(**base))  # type: ignore[arg-type]


def test_generate_returns_the_answer_and_its_token_count(llm_server_url: str) -> None:
    g = generator(llm_server_url)
    text = g.generate(QUESTION)
    assert text.strip()
    assert g.last_completion_tokens is not None and 0 < g.last_completion_tokens <= 32
    assert g.model.endswith(".gguf")  # discovered from /v1/models
    assert g.context_tokens >= 2048


def test_stream_yields_pieces_that_join_to_the_greedy_answer(llm_server_url: str) -> None:
    g = generator(llm_server_url)
    pieces = list(g.stream(QUESTION))
    assert len(pieces) > 1
    assert "".join(pieces) == g.generate(QUESTION)
    assert g.last_completion_tokens is not None and g.last_completion_tokens > 0


def test_url_with_v1_suffix_works(llm_server_url: str) -> None:
    assert generator(llm_server_url + "/v1/").generate(QUESTION).strip()


def test_unreachable_server_fails_fast_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(GeneratorError, match="cannot reach the LLM server") as info:
        list(generator(url).stream(QUESTION))
    assert url in str(info.value)
    assert info.value.partial == ""
    assert time.monotonic() - started < 5


def test_http_error_names_the_url_and_status(llm_server_url: str) -> None:
    url = llm_server_url + "/not-an-api"
    with pytest.raises(GeneratorError, match="HTTP 404") as info:
        generator(url).generate(QUESTION)
    assert url in str(info.value)


def test_timeout_is_reported_with_the_url(llm_server_url: str) -> None:
    g = generator(llm_server_url, max_new_tokens=1000, llm_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(GeneratorError, match="timed out") as info:
        g.generate(LONG)  # non-streaming: nothing arrives until the whole answer is done
    assert llm_server_url in str(info.value)
    assert time.monotonic() - started < 10


def test_server_killed_mid_stream_keeps_the_partial_answer(
    llm_server_factory: Callable[[], LlamaServer],
) -> None:
    server = llm_server_factory()
    g = generator(server.url, max_new_tokens=1000)
    received: list[str] = []
    with pytest.raises(GeneratorError) as info:
        for piece in g.stream(LONG):
            received.append(piece)
            if len(received) == 5:
                server.kill()
    assert len(received) >= 5
    assert info.value.partial == "".join(received)
    assert server.url in str(info.value)
    assert "mid-answer" in str(info.value)


def test_hub_stays_blocked_in_offline_mode_while_the_own_server_is_reachable(llm_server_url: str) -> None:
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import get_session

    assert constants.is_offline_mode()  # set by tests/conftest.py
    assert generator(llm_server_url).generate(QUESTION).strip()
    with pytest.raises(OfflineModeIsEnabled):
        get_session().get(f"{constants.ENDPOINT}/api/models/HuggingFaceH4/zephyr-7b-beta")
