"""rag.py's pure parts (budget, truncation, prompt, citations) and the pipeline's control flow, with a
deterministic word-counting generator instead of a model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from esrag.answering.prompt import (
    EXACT_MARGIN_TOKENS,
    SYSTEM_PROMPT,
    Passage,
    build_messages,
    fit_passages,
    format_passage,
    prompt_budget,
    truncate_to_tokens,
)
from esrag.answering.rag import (
    CUT_NOTE,
    NO_CONTEXT_ANSWER,
    NOT_SUPPORTED_NOTE,
    UNSUPPORTED_MARK,
    RagPipeline,
    format_sources,
    is_relevant,
    parse_citations,
    resolve_citations,
)
from esrag.config import Settings
from esrag.errors import ConfigError, GeneratorError
from esrag.generators.base import Generator, Message, estimate_tokens
from esrag.types import Hit


def words(text: str) -> int:
    """Token counter for the tests: one token per whitespace-separated word."""
    return len(text.split())


def hit(i: int, text: str = "", score: float = 1.0, title: str = "") -> Hit:
    return Hit(id=f"c{i}", doc_id=f"d{i}", source=f"docs/{i}.md", title=title, text=text or f"text {i}",
               chunk_index=0, score=score, bm25_score=None, dense_score=None, bm25_rank=None,
               dense_rank=None, bm25_norm=0.0, dense_norm=0.0)


# -- budget and fitting ----------------------------------------------------------------------------------


def test_prompt_budget_subtracts_answer_overhead_and_margin() -> None:
    assert prompt_budget(2048, 512, 100, exact=True) == 2048 - 512 - 100 - EXACT_MARGIN_TOKENS


def test_prompt_budget_keeps_a_larger_margin_for_estimated_counts() -> None:
    assert prompt_budget(2048, 512, 100, exact=False) == 2048 - 512 - 100 - 204


def test_truncate_returns_text_unchanged_when_it_fits() -> None:
    assert truncate_to_tokens("a b c", 3, words) == "a b c"


def test_truncate_cuts_at_a_word_boundary_with_a_mark_within_the_limit() -> None:
    out = truncate_to_tokens("one two three four five six", 4, words)
    assert out == "one two three …"
    assert words(out) <= 4


def test_truncate_returns_empty_when_no_word_fits() -> None:
    assert truncate_to_tokens("alpha beta", 1, words) == ""


def test_fit_passages_numbers_all_hits_in_rank_order_without_budget() -> None:
    passages = fit_passages([hit(1), hit(2), hit(3)], None, words)
    assert [p.n for p in passages] == [1, 2, 3]
    assert [p.hit.id for p in passages] == ["c1", "c2", "c3"]
    assert not any(p.truncated for p in passages)


def test_fit_passages_keeps_a_best_ranked_prefix_and_truncates_the_first_that_overflows() -> None:
    long = " ".join(f"w{i}" for i in range(100))
    hits = [hit(1, "short text"), hit(2, long), hit(3, "tiny")]
    # block = "[n] docs/n.md\n" (2 words) + text; passage 1 costs 4 words
    passages = fit_passages(hits, 50, words, min_tokens=10)
    assert [p.hit.id for p in passages] == ["c1", "c2"]  # c3 would fit but comes after the cut
    assert passages[1].truncated
    assert passages[1].text.endswith("…")
    assert sum(p.tokens for p in passages) <= 50


def test_fit_passages_drops_the_overflowing_hit_when_too_little_room_is_left() -> None:
    long = " ".join(f"w{i}" for i in range(100))
    passages = fit_passages([hit(1, "short text"), hit(2, long)], 12, words, min_tokens=10)
    assert [p.hit.id for p in passages] == ["c1"]


def test_passage_block_names_source_and_title() -> None:
    assert format_passage(2, hit(7, "body", title="Keys"), "body") == "[2] docs/7.md — Keys\nbody"
    assert format_passage(1, hit(7, "body"), "body") == "[1] docs/7.md\nbody"


def test_build_messages_puts_rules_in_system_and_numbered_sources_before_the_question() -> None:
    passages = fit_passages([hit(1, "alpha"), hit(2, "beta")], None, words)
    system, user = build_messages("  What?  ", passages)
    assert system == Message("system", SYSTEM_PROMPT)
    assert user.role == "user"
    assert user.content == "Sources:\n\n[1] docs/1.md\nalpha\n\n[2] docs/2.md\nbeta\n\nQuestion: What?"


# -- citations -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n", "valid", "invalid"),
    [
        ("Paris [1].", 3, [1], []),
        ("A [2][1] and again [2].", 3, [2, 1], []),
        ("Both [1, 3] and [2;3].", 3, [1, 3, 2], []),
        ("Range [1-3] en dash [2–3].", 3, [1, 2, 3], []),
        ("Out of range [4] and [0].", 3, [], [4, 0]),
        ("Mixed [1, 9].", 3, [1], [9]),
        ("Not citations: [a], [], [1.5], x[i].", 3, [], []),
        ("Year range [1990-2020] is not expanded.", 3, [], [1990, 2020]),
        ("No sources at all [1].", 0, [], [1]),
    ],
)
def test_parse_citations(text: str, n: int, valid: list[int], invalid: list[int]) -> None:
    assert parse_citations(text, n) == (valid, invalid)


def test_resolve_citations_maps_numbers_to_chunks() -> None:
    passages = fit_passages([hit(1, title="One"), hit(2)], None, words)
    [c] = resolve_citations([2], passages)
    assert (c.n, c.doc_id, c.source, c.chunk_id, c.title) == (2, "d2", "docs/2.md", "c2", "")
    assert format_sources(resolve_citations([1, 2], passages)) == "Sources:\n[1] docs/1.md — One\n[2] docs/2.md"
    assert format_sources([]) == ""


def test_relevance_needs_a_hit_at_or_above_min_score() -> None:
    assert not is_relevant([], 0.0)
    assert is_relevant([hit(1, score=0.5)], 0.5)
    assert not is_relevant([hit(1, score=0.4)], 0.5)


def test_estimate_tokens_over_counts_rather_than_under_counts() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("hello world, this is English") >= 6
    assert estimate_tokens("東京都") == 3


# -- the pipeline, with a scripted generator -------------------------------------------------------------


class ScriptedGenerator(Generator):
    """Yields fixed pieces; counts words as tokens; records every prompt it was given."""

    name = "scripted"
    model = "scripted-1"
    exact_token_counts = True

    def __init__(self, pieces: Sequence[str], context_tokens: int = 400, max_new_tokens: int = 50,
                 fail_after: int | None = None) -> None:
        self.pieces = list(pieces)
        self.context_tokens = context_tokens
        self.max_new_tokens = max_new_tokens
        self.fail_after = fail_after
        self.calls: list[list[Message]] = []

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        self.calls.append(list(messages))
        for i, piece in enumerate(self.pieces):
            if self.fail_after is not None and i == self.fail_after:
                raise GeneratorError("backend died", partial="".join(self.pieces[:i]))
            yield piece
        self.last_completion_tokens = len(self.pieces)

    def count_tokens(self, text: str) -> int:
        return words(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return sum(words(m.content) + 2 for m in messages)


class FakeResult:
    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits


class FakeSearcher:
    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits
        self.calls: list[dict[str, Any]] = []

    def search(self, query: str, **kwargs: Any) -> FakeResult:
        self.calls.append({"query": query, **kwargs})
        return FakeResult(self.hits[: kwargs.get("k") or len(self.hits)])


def pipeline(hits: list[Hit], gen: Generator | None, **settings: Any) -> RagPipeline:
    return RagPipeline(FakeSearcher(hits), gen, Settings(**settings))  # type: ignore[arg-type]


def test_ask_maps_citations_reports_invalid_ones_and_times_the_answer() -> None:
    gen = ScriptedGenerator(["Paris ", "is the capital [1]", ", see [2] and [5]."])
    answer = pipeline([hit(1, "Paris is the capital of France"), hit(2, "France")], gen).ask("Capital?")
    assert answer.text == "Paris is the capital [1], see [2] and [5]."
    assert [(c.n, c.chunk_id) for c in answer.citations] == [(1, "c1"), (2, "c2")]
    assert answer.invalid_citations == [5]
    assert not answer.no_context
    assert answer.timings.tokens == 3
    assert answer.timings.ttft_ms is not None and answer.timings.ttft_ms >= 0
    assert answer.timings.total_ms >= answer.timings.retrieval_ms
    assert answer.to_dict()["citations"][0] == {"n": 1, "doc_id": "d1", "source": "docs/1.md",
                                                "chunk_id": "c1", "title": ""}


def test_retrieval_uses_rag_k_by_default_and_passes_search_options_through() -> None:
    p = pipeline([hit(i) for i in range(1, 9)], ScriptedGenerator(["ok"]), rag_k=3)
    answer = p.ask("q", alpha=0.2, filters={"lang": ("en",)})
    assert len(answer.retrieved) == 3
    assert p.searcher.calls[0] == {"query": "q", "k": 3, "alpha": 0.2, "filters": {"lang": ("en",)}}  # type: ignore[attr-defined]


def test_stream_yields_checked_sentences_then_exposes_the_answer() -> None:
    gen = ScriptedGenerator(["Paris is", " nice [1].", " Rome is far.[1] Lyon", " too"])
    stream = pipeline([hit(1, "Paris is nice, and so is Lyon too.")], gen).stream("q")
    assert [p.n for p in stream.passages] == [1]
    with pytest.raises(RuntimeError):
        _ = stream.answer
    # a sentence is let out once the next one starts; one its source does not back is marked
    assert list(stream) == ["Paris is nice [1].", " Rome is far.[1]" + UNSUPPORTED_MARK, " Lyon too"]
    answer = stream.answer
    assert answer.text == "Paris is nice [1]. Rome is far.[1] Lyon too"
    assert answer.display_text == "".join(["Paris is nice [1].", " Rome is far.[1] [unsupported]", " Lyon too"])
    assert [(s.text, s.cites, s.source, s.supported) for s in answer.sentences] == [
        ("Paris is nice .", (1,), 1, True), ("Rome is far.", (1,), 1, False), ("Lyon too", (), 1, True)]
    assert answer.notes == ["1 of 3 sentences are not supported by the sources they cite (marked [unsupported])."]
    assert answer.to_dict()["unsupported_sentences"] == 1


def test_an_answer_that_loops_is_cut_and_says_so() -> None:
    gen = ScriptedGenerator(["Paris is nice.[1]"] + [" The answer is:"] * 30)
    answer = pipeline([hit(1, "Paris is nice.")], gen).ask("q")
    assert answer.text == "Paris is nice.[1] The answer is:"
    assert answer.cut == "loop" and answer.notes[0] == CUT_NOTE
    assert answer.to_dict()["cut"] == "loop"
    kept = pipeline([hit(1, "Paris is nice.")], ScriptedGenerator(["a b c."] * 3), stop_on_loop=False).ask("q")
    assert kept.text == "a b c.a b c.a b c." and kept.cut is None


def test_an_answer_no_source_supports_says_so() -> None:
    answer = pipeline([hit(1, "Paris is nice.")], ScriptedGenerator(["Rome is far.[1]"])).ask("q")
    assert answer.notes == [NOT_SUPPORTED_NOTE]


def test_no_hits_answers_without_calling_the_llm() -> None:
    gen = ScriptedGenerator(["should not be called"])
    answer = pipeline([], gen).ask("q")
    assert answer.no_context
    assert answer.text == NO_CONTEXT_ANSWER
    assert gen.calls == []
    assert answer.timings.tokens == 0 and answer.timings.ttft_ms is None


def test_best_score_below_min_score_answers_without_calling_the_llm() -> None:
    gen = ScriptedGenerator(["should not be called"])
    answer = pipeline([hit(1, score=0.3)], gen, min_score=0.5).ask("q")
    assert answer.no_context and gen.calls == [] and answer.passages == []
    assert len(answer.retrieved) == 1


def test_retrieval_only_returns_all_passages_and_no_text() -> None:
    answer = pipeline([hit(1), hit(2)], None).ask("q")
    assert answer.text == "" and answer.generator is None
    assert [p.n for p in answer.passages] == [1, 2]


def test_prompt_fits_the_generator_context() -> None:
    long = " ".join(f"w{i}" for i in range(150))
    gen = ScriptedGenerator(["ok"], context_tokens=300, max_new_tokens=50)
    stream = pipeline([hit(i, long) for i in range(1, 6)], gen).stream("question")
    list(stream)
    prompt = gen.count_prompt_tokens(gen.calls[0])
    assert prompt + gen.max_new_tokens <= gen.context_tokens
    assert 1 <= len(stream.passages) < 5
    assert isinstance(stream.passages[-1], Passage)


def test_no_room_for_sources_is_a_config_error() -> None:
    gen = ScriptedGenerator(["ok"], context_tokens=100, max_new_tokens=90)
    with pytest.raises(ConfigError, match="no room for sources"):
        pipeline([hit(1)], gen).stream("q")


def test_empty_question_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="empty"):
        pipeline([hit(1)], ScriptedGenerator(["ok"])).ask("   ")


def test_generator_failure_propagates_with_the_partial_answer() -> None:
    gen = ScriptedGenerator(["one ", "two ", "three"], fail_after=2)
    stream = pipeline([hit(1)], gen).stream("q")
    got: list[str] = []
    with pytest.raises(GeneratorError) as info:
        for piece in stream:
            got.append(piece)
    assert got == []  # nothing let out: the first sentence had not ended
    assert info.value.partial == "one two "


class ConstrainingGenerator(ScriptedGenerator):
    """A ScriptedGenerator that declares constrained citations and records the ``sources`` it was given."""

    constrains_citations = True

    def __init__(self, pieces: Sequence[str]) -> None:
        super().__init__(pieces)
        self.sources: list[int] = []

    def stream(self, messages: Sequence[Message], sources: int = 0,  # type: ignore[override]
               passage_texts: Sequence[str] | None = None, question: str = "") -> Iterator[str]:
        self.sources.append(sources)
        self.texts = list(passage_texts or [])
        return super().stream(messages)


def test_generators_that_constrain_citations_get_the_number_of_sources() -> None:
    gen = ConstrainingGenerator(["Paris.[1]"])
    answer = pipeline([hit(1), hit(2)], gen).ask("q")
    assert gen.sources == [2] and answer.constrained_citations and answer.to_dict()["constrained_citations"]
    assert gen.texts == ["text 1", "text 2"]
    off = ConstrainingGenerator(["Paris."])
    answer = pipeline([hit(1), hit(2)], off, force_citations=False).ask("q")
    assert off.sources == [0] and not answer.constrained_citations
    plain = ScriptedGenerator(["Paris."])  # takes no ``sources`` argument: never given one
    assert not pipeline([hit(1)], plain).ask("q").constrained_citations and len(plain.calls) == 1
    assert not pipeline([], ConstrainingGenerator(["x"])).ask("q").constrained_citations  # no context


def test_a_generators_load_time_is_reported_by_its_first_answer_only_even_from_two_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    gen = ScriptedGenerator(["Paris is nice."])
    gen.load_seconds = 2.5  # type: ignore[attr-defined]
    gen.loaded_from_cache = False  # type: ignore[attr-defined]
    p = pipeline([hit(1, "Paris is nice.")], gen)
    with ThreadPoolExecutor(2) as pool:
        loads = [s.answer.timings for s in pool.map(lambda _: _consumed(p.stream("q")), range(8))]
    assert sorted(t.model_load_ms for t in loads) == [0.0] * 7 + [2500.0]
    assert [t.model_converted for t in loads].count(True) == 1


def _consumed(stream: Any) -> Any:
    for _ in stream:
        pass
    return stream


def test_an_answer_retrieves_at_most_max_answer_k_passages() -> None:
    from esrag.answering.rag import MAX_ANSWER_K

    p = pipeline([hit(i) for i in range(1, 80)], ScriptedGenerator(["ok [1]."]))
    assert len(p.ask("q", k=MAX_ANSWER_K).retrieved) == MAX_ANSWER_K
    with pytest.raises(ConfigError, match=rf"^k: an answer retrieves at most {MAX_ANSWER_K} passages \(got 51\)"):
        p.ask("q", k=MAX_ANSWER_K + 1)
    with pytest.raises(ConfigError, match="got 60"):
        pipeline([hit(1)], ScriptedGenerator(["ok"]), rag_k=60).ask("q")
    assert not p.searcher.calls[1:]  # type: ignore[attr-defined]  # refused before retrieval
