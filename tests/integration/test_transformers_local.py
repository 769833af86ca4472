"""TransformersLocalGenerator with the packaged SmolLM2-135M-Instruct on CPU: float32 and bitsandbytes 4-bit,
streaming equal to non-streaming under greedy decoding, and the dequantised-weights cache."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esrag.answering.rag import parse_citations
from esrag.config import Settings
from esrag.errors import MissingDependencyError
from esrag.generators.base import Message
from esrag.generators.transformers_local import TransformersLocalGenerator

pytestmark = pytest.mark.integration

QUESTION = [Message("system", "Answer briefly."), Message("user", "What is the capital of France?")]


def make(cache: Path, **settings: Any) -> TransformersLocalGenerator:
    base: dict[str, Any] = {"device": "cpu", "max_new_tokens": 24, "temperature": 0.0, "quantize": "none"}
    base.update(settings)
    return TransformersLocalGenerator(Settings(**base), cache_dir=cache)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Test machines are small and shared; one intra-op thread avoids OpenMP oversubscription, which made
    greedy generation in the main thread ~10x slower there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cold(llm_cache_dir: Path) -> TransformersLocalGenerator:
    """The first load of the session (converts the GGUF unless another module already did)."""
    return make(llm_cache_dir)


def test_float32_generates_and_reports_model_facts(cold: TransformersLocalGenerator) -> None:
    assert cold.dtype == "float32" and cold.quantize == "none" and cold.device == "cpu"
    assert cold.context_tokens == 8192  # SmolLM2's max_position_embeddings
    text = cold.generate(QUESTION)
    assert text.strip()
    assert cold.last_completion_tokens is not None and 0 < cold.last_completion_tokens <= 24


def test_streaming_equals_non_streaming_for_greedy_decoding(cold: TransformersLocalGenerator) -> None:
    pieces = list(cold.stream(QUESTION))
    assert len(pieces) > 1
    assert "".join(pieces) == cold.generate(QUESTION)


def test_closing_the_stream_early_stops_generation(cold: TransformersLocalGenerator) -> None:
    stream: Any = cold.stream([Message("user", "Count from one to one hundred in words.")])
    first = next(stream)
    stream.close()  # joins the generating thread; must not hang
    assert first
    assert cold.generate(QUESTION).strip()  # the model is still usable


SOURCED = [Message("system", "Answer from the sources and cite them as [n]."),
           Message("user", "Sources:\n\n[1] paris.md\nParis is the capital of France. The Eiffel Tower was "
                           "completed in 1889.\n\n[2] rust.md\nRust is a programming language.\n\n"
                           "Question: When was the Eiffel Tower completed?")]


def test_constrained_decoding_makes_every_sentence_cite_a_valid_source(cold: TransformersLocalGenerator) -> None:
    text = cold.generate(SOURCED, sources=2)
    valid, invalid = parse_citations(text, 2)
    assert valid and not invalid, text
    # every sentence (up to the last one, which the token budget may cut) carries a citation
    sentences = [s for s in re.split(r"(?<=[.!?\]])\s+", text.strip()) if re.search(r"\w", s)]
    assert all(re.search(r"\[\d+\]", s) for s in sentences[:-1]), text
    assert "".join(cold.stream(SOURCED, sources=2)) == text  # the constraint also applies when streaming
    assert cold.citation_rules().close == cold.tokenizer.convert_tokens_to_ids("]")


def test_token_counts_use_the_model_tokenizer(cold: TransformersLocalGenerator) -> None:
    assert cold.exact_token_counts
    assert cold.count_tokens("") == 0
    assert cold.count_tokens("Paris") == len(cold.tokenizer("Paris", add_special_tokens=False)["input_ids"])
    prompt = cold.render(QUESTION)
    assert "<|im_start|>system" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
    assert cold.count_prompt_tokens(QUESTION) > cold.count_tokens("What is the capital of France?")


def test_dequantised_weights_are_cached_and_reused(cold: TransformersLocalGenerator, llm_cache_dir: Path) -> None:
    cached = make(llm_cache_dir)
    assert cached.loaded_from_cache is True
    assert (llm_cache_dir / "models" / "SmolLM2-135M-Instruct.Q4_1" / "esrag-cache.json").is_file()
    assert (llm_cache_dir / "models" / "SmolLM2-135M-Instruct.Q4_1" / "model.safetensors").is_file()
    if cold.loaded_from_cache is False:
        assert cached.load_seconds < cold.load_seconds
    assert cached.generate(QUESTION) == cold.generate(QUESTION)


def test_bitsandbytes_4bit_on_cpu(cold: TransformersLocalGenerator, llm_cache_dir: Path) -> None:
    g = make(llm_cache_dir, quantize="4bit")
    try:
        assert g.quantize == "4bit" and g.dtype == "float32"
        assert any(type(m).__name__ == "Linear4bit" for m in g._model.modules())
        text = g.generate(QUESTION)
        assert text.strip()
        assert "".join(g.stream(QUESTION)) == text
    finally:
        g.close()


def test_missing_bitsandbytes_names_the_quant_extra(monkeypatch: pytest.MonkeyPatch, llm_cache_dir: Path) -> None:
    real = importlib.util.find_spec

    def no_bnb(name: str, *args: Any) -> Any:
        return None if name == "bitsandbytes" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_bnb)
    with pytest.raises(MissingDependencyError, match=r"esrag\[quant\]"):
        make(llm_cache_dir, quantize="4bit")
