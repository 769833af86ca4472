from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esrag.errors import ConfigError
from esrag.ingest.chunking import _MAX_CHARS_PER_TOKEN as MAX_CHARS_PER_TOKEN
from esrag.ingest.chunking import Chunker, ChunkSpan, chunk_document
from esrag.types import Chunk, Document, sha256_hex

Counter = Callable[[Sequence[str]], list[int]]


def words(texts: Sequence[str]) -> list[int]:
    """Whitespace words: additive across whitespace, like WordPiece."""
    return [len(t.split()) for t in texts]


def quarters(texts: Sequence[str]) -> list[int]:
    """ceil(characters / 4): lets a single word exceed the limit, and is not additive."""
    return [(len(t) + 3) // 4 for t in texts]


def chars(texts: Sequence[str]) -> list[int]:
    """Characters, whitespace included: merged pieces always count more than the sum of their parts."""
    return [len(t) for t in texts]


def newline_heavy(texts: Sequence[str]) -> list[int]:
    """Words plus 3 per newline: separators with tokens of their own, like some BPE tokenizers."""
    return [len(t.split()) + 3 * t.count("\n") for t in texts]


class Recorder:
    """A counter that records every batch it is asked for."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.batches: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> list[int]:
        self.batches.append(list(texts))
        return self.counter(texts)


def assert_invariants(text: str, chunker: Chunker, count: Counter) -> list[ChunkSpan]:
    """The guarantees of Chunker.split, checked with the same counter; returns the spans."""
    spans = chunker.split(text)
    assert spans == chunker.split(text), "not deterministic"
    if not text.strip():
        assert spans == []
        return spans
    covered = [False] * len(text)
    for span in spans:
        assert span.text == text[span.start:span.end]
        assert span.text and span.text == span.text.strip()
        assert count([span.text])[0] <= chunker.size or len(span.text) == 1
        assert len("".join(span.text.split())) <= chunker.size * MAX_CHARS_PER_TOKEN
        covered[span.start:span.end] = [True] * (span.end - span.start)
    lost = [c for c, inside in zip(text, covered, strict=True) if not inside and not c.isspace()]
    assert lost == [], "text lost"
    for prev, nxt in zip(spans, spans[1:], strict=False):
        assert prev.start < nxt.start and prev.end < nxt.end
        shared = text[nxt.start:prev.end] if nxt.start < prev.end else ""
        assert count([shared])[0] <= chunker.overlap
    if count([text.strip()])[0] <= chunker.size and len(text.strip()) <= chunker.size * MAX_CHARS_PER_TOKEN:
        assert len(spans) == 1
    return spans


_PIECES = st.sampled_from([
    "a", "bb", "ccc", "hello", "world.", "Yes!", "why?", '"Quoted."', "(aside.)", "naïve", "x" * 41,
    "supercalifragilistic", "e.g.", "日本語。", "今日は晴れ。", "🙂", "3.14", "under_score", "a-b-c-d-e-f",
])
_SEPARATORS = st.sampled_from(["", " ", " ", " ", "  ", "\n", "\n\n", " \n \n ", "\t", "\r\n"])
texts = st.lists(st.tuples(_PIECES | st.text(max_size=6), _SEPARATORS), max_size=80).map(
    lambda parts: "".join(p + s for p, s in parts)
)


@st.composite
def size_and_overlap(draw: st.DrawFn, low: int = 1, high: int = 24) -> tuple[int, int]:
    size = draw(st.integers(low, high))
    return size, draw(st.integers(0, size - 1))


@pytest.mark.parametrize("count", [words, quarters, chars, newline_heavy], ids=lambda f: f.__name__)
@settings(max_examples=150, deadline=None)
@given(text=texts, params=size_and_overlap())
def test_invariants_hold_with_simple_counters(count: Counter, text: str, params: tuple[int, int]) -> None:
    size, overlap = params
    assert_invariants(text, Chunker(count, chunk_size=size, chunk_overlap=overlap), count)


@pytest.fixture(scope="module")
def real_count(embedder) -> Counter:  # type: ignore[no-untyped-def]
    """The packaged all-MiniLM-L6-v2 tokenizer's counter (the model is loaded once per session)."""
    return embedder.count_tokens  # type: ignore[no-any-return]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, params=size_and_overlap(low=2, high=40))
def test_invariants_hold_with_the_real_tokenizer(real_count: Counter, text: str,
                                                 params: tuple[int, int]) -> None:
    size, overlap = params
    assert_invariants(text, Chunker(real_count, chunk_size=size, chunk_overlap=overlap), real_count)


def test_real_tokenizer_long_document_respects_model_limit(embedder) -> None:  # type: ignore[no-untyped-def]
    sentence = "Hybrid retrieval fuses BM25 scores with dense vector similarity for better recall. "
    text = "\n\n".join(sentence * (3 + i % 7) for i in range(60)) + "\n\n" + "-".join(["token"] * 400)
    chunker = Chunker(embedder.count_tokens, chunk_size=512, chunk_overlap=32, max_tokens=embedder.max_tokens)
    assert chunker.size == embedder.max_tokens == 254
    spans = assert_invariants(text, chunker, embedder.count_tokens)
    assert len(spans) > 10
    # the sentences fit, so no chunk but the ones of the unbroken "token-token-..." word ends mid-sentence
    prose = [s for s in spans if "-" not in s.text]
    assert prose and all(s.text.endswith(".") for s in prose)


def test_blank_text_gives_no_chunks_without_counting() -> None:
    counter = Recorder(words)
    chunker = Chunker(counter, chunk_size=8, chunk_overlap=2)
    assert chunker.split("") == []
    assert chunker.split(" \n\n\t \r\n") == []
    assert counter.batches == []


def test_text_that_fits_is_one_stripped_chunk_after_one_count() -> None:
    counter = Recorder(words)
    text = "  Hello world.\n\nSecond paragraph.\n"
    assert Chunker(counter, chunk_size=8, chunk_overlap=2).split(text) == [
        ChunkSpan(2, 33, "Hello world.\n\nSecond paragraph.")
    ]
    assert counter.batches == [["Hello world.\n\nSecond paragraph."]]


def test_paragraph_boundary_is_preferred_over_a_mid_sentence_cut() -> None:
    text = ("One two three. Four five six seven. Eight nine.\n\n"
            "Ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty "
            "twentyone. Short one.")
    spans = Chunker(words, chunk_size=10, chunk_overlap=3).split(text)
    assert [s.text for s in spans] == [
        "One two three. Four five six seven. Eight nine.",
        "Ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen",
        "seventeen eighteen nineteen twenty twentyone. Short one.",
    ]
    assert [(s.start, s.end) for s in spans] == [(0, 47), (49, 128), (101, 157)]


def test_sentence_boundary_is_preferred_over_a_word_cut() -> None:
    text = "Alpha beta gamma delta epsilon. Zeta eta theta iota kappa lambda mu nu xi omicron."
    spans = Chunker(words, chunk_size=8, chunk_overlap=2).split(text)
    assert [s.text for s in spans] == [
        "Alpha beta gamma delta epsilon.",  # greedy would have taken "Zeta eta theta" too
        "Zeta eta theta iota kappa lambda mu nu",
        "mu nu xi omicron.",  # starts with the previous chunk's last 2 words: the overlap
    ]


def test_small_paragraphs_are_merged_up_to_the_size() -> None:
    text = "\n\n".join(f"Paragraph {i} has five words." for i in range(6))
    spans = Chunker(words, chunk_size=12, chunk_overlap=0).split(text)
    assert [s.text.count("Paragraph") for s in spans] == [2, 2, 2]
    assert spans[0].text == "Paragraph 0 has five words.\n\nParagraph 1 has five words."


def test_overlap_uses_whole_trailing_pieces_only() -> None:
    text = "aa bb cc dd ee ff gg hh"
    spans = Chunker(words, chunk_size=4, chunk_overlap=2).split(text)
    assert [s.text for s in spans] == ["aa bb cc dd", "cc dd ee ff", "ee ff gg hh"]
    # a trailing piece larger than the overlap is not repeated
    spans = Chunker(words, chunk_size=6, chunk_overlap=2).split("One two three.\nFour five six.\nSeven.")
    assert [s.text for s in spans] == ["One two three.\nFour five six.", "Seven."]


def test_overlong_word_is_cut_by_characters() -> None:
    spans = Chunker(quarters, chunk_size=2, chunk_overlap=0).split("abcdefghijklmnopqrst")
    assert [(s.start, s.end, s.text) for s in spans] == [
        (0, 8, "abcdefgh"), (8, 16, "ijklmnop"), (16, 20, "qrst")
    ]


def test_merged_chunks_are_recounted_when_parts_do_not_add_up() -> None:
    # "aa" + "bb" sums to 4 characters but "aa bb" has 5: every merge is over the size of 4
    assert [s.text for s in Chunker(chars, chunk_size=4, chunk_overlap=0).split("aa bb cc dd")] == [
        "aa", "bb", "cc", "dd"
    ]
    assert [s.text for s in Chunker(chars, chunk_size=5, chunk_overlap=2).split("aa bb cc dd")] == [
        "aa bb", "bb cc", "cc dd"
    ]


def test_sentences_end_after_closing_quotes_and_cjk_full_stops() -> None:
    spans = Chunker(words, chunk_size=3, chunk_overlap=0).split('He said "Stop." Then left.')
    assert [s.text for s in spans] == ['He said "Stop."', "Then left."]
    spans = Chunker(chars, chunk_size=7, chunk_overlap=0).split("今日は晴れ。明日は雨です。")
    assert [s.text for s in spans] == ["今日は晴れ。", "明日は雨です。"]


def test_long_document_is_counted_in_a_few_batches() -> None:
    counter = Recorder(words)
    text = "\n\n".join(" ".join(["word"] * 20) + "." for _ in range(50))
    spans = Chunker(counter, chunk_size=64, chunk_overlap=8).split(text)
    assert len(spans) == 17  # three 21-word paragraphs per chunk
    # one batch of paragraphs, one batch verifying the merged chunks (the whole text, longer than
    # 64 * 32 characters, is never counted at once)
    assert [len(b) for b in counter.batches] == [50, 17]


def test_effective_size_is_capped_by_the_model_limit() -> None:
    chunker = Chunker(words, chunk_size=256, chunk_overlap=32, max_tokens=128)
    assert (chunker.size, chunker.overlap) == (128, 32)
    assert chunker.signature == "recursive:v3:size=128:overlap=32"
    chunker = Chunker(words, chunk_size=256, chunk_overlap=32, max_tokens=16)
    assert (chunker.size, chunker.overlap) == (16, 15)
    assert Chunker(words).signature == "recursive:v3:size=256:overlap=32"


@pytest.mark.parametrize(("size", "overlap", "max_tokens"), [(0, 0, None), (8, -1, None), (8, 8, None),
                                                            (8, 9, None), (8, 2, 0)])
def test_invalid_parameters_are_config_errors(size: int, overlap: int, max_tokens: int | None) -> None:
    with pytest.raises(ConfigError):
        Chunker(words, chunk_size=size, chunk_overlap=overlap, max_tokens=max_tokens)


def _doc(text: str) -> Document:
    return Document(doc_id="/docs/a.md", source="/docs/a.md", text=text, title="A",
                    metadata={"ext": ".md", "team": "search"})


def test_chunk_document_builds_content_addressed_chunks() -> None:
    chunker = Chunker(words, chunk_size=4, chunk_overlap=1)
    doc = _doc("aa bb cc dd ee ff")
    chunks = chunk_document(doc, chunker)
    doc_sha = doc.sha(chunker.signature)
    assert [c.text for c in chunks] == ["aa bb cc dd", "dd ee ff"]
    for index, chunk in enumerate(chunks):
        assert chunk == Chunk(
            id=Chunk.make_id(doc.doc_id, doc_sha, index, sha256_hex(chunk.text)),
            doc_id="/docs/a.md", source="/docs/a.md", title="A", text=chunk.text, chunk_index=index,
            chunk_count=2, start=doc.text.index(chunk.text), end=doc.text.index(chunk.text) + len(chunk.text),
            chunk_sha=sha256_hex(chunk.text), doc_sha=doc_sha, metadata={"ext": ".md", "team": "search"},
        )
    assert chunk_document(_doc(" \n "), chunker) == []


def _ids(text: str, size: int = 5) -> list[str]:
    return [c.id for c in chunk_document(_doc(text), Chunker(words, chunk_size=size, chunk_overlap=1))]


@settings(max_examples=100, deadline=None)
@given(text=texts.filter(lambda t: t.strip() != ""), extra=st.text(min_size=1, max_size=5))
def test_chunk_ids_are_stable_and_change_with_the_text_or_parameters(text: str, extra: str) -> None:
    ids = _ids(text)
    assert ids == _ids(text)
    assert len(set(ids)) == len(ids)
    assert not set(ids) & set(_ids(text + extra))
    assert not set(ids) & set(_ids(text, size=6))


# -- bounded time on hostile text ----------------------------------------------------------------------------

_HOSTILE_PIECES = st.sampled_from([
    " " * 5000, "\t \t" * 2000, "\n" * 3000, " \n" * 2000, "x" * 20_000, "ab" * 6000, ".", "!?", "word", "\u3002",
])
hostile_texts = st.lists(_HOSTILE_PIECES | _PIECES, min_size=1, max_size=12).map("".join)


def unk_words(texts: Sequence[str]) -> list[int]:
    """WordPiece-like for long words: a whitespace-free run of any length counts as one [UNK] token."""
    return [len(t.split()) for t in texts]


class CharBudget:
    """A counter that fails the test once it has been asked to count more than ``factor`` times the text:
    a sign of quadratic work."""

    def __init__(self, counter: Counter, text_len: int, factor: int = 400) -> None:
        self.counter, self.budget = counter, factor * max(text_len, 1000)

    def __call__(self, texts: Sequence[str]) -> list[int]:
        self.budget -= sum(len(t) for t in texts)
        assert self.budget >= 0, "the tokenizer was asked to count far more than the text"
        return self.counter(texts)


@pytest.mark.parametrize("count", [words, unk_words, quarters, newline_heavy], ids=lambda f: f.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile_texts, params=size_and_overlap(low=4, high=64))
def test_invariants_and_bounded_counting_on_long_runs_long_words_and_no_separators(
        count: Counter, text: str, params: tuple[int, int]) -> None:
    size, overlap = params
    budget = CharBudget(count, len(text))
    assert_invariants(text, Chunker(budget, chunk_size=size, chunk_overlap=overlap), count)


def _alarm(seconds: int) -> Any:
    import signal

    def fail(*_: object) -> None:
        raise AssertionError(f"chunking took more than {seconds} s: not linear")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    return signal


@pytest.mark.parametrize("text", [
    "a" + " " * 1_000_000 + "b",  # once ~12 minutes: \s*\n\s* rescanned the run from every space
    ("word" + " \t" * 3000) * 100,
    "x" * 1_000_000,
    "\n".join([" " * 20_000] * 30) + "end",
], ids=["1M-spaces", "runs-between-words", "1M-char-word", "whitespace-lines"])
def test_megabyte_inputs_chunk_in_linear_time(text: str) -> None:
    signal = _alarm(30)  # a guard against a hang, not a timing claim: the linear code takes well under 1 s
    try:
        spans = Chunker(words, chunk_size=256, chunk_overlap=32).split(text)
    finally:
        signal.alarm(0)
    assert spans and all(len("".join(s.text.split())) <= 256 * MAX_CHARS_PER_TOKEN for s in spans)


def test_a_megabyte_word_that_counts_as_one_unknown_token_is_cut_into_bounded_chunks() -> None:
    text = "start " + "z" * 1_000_000 + " end"
    spans = Chunker(unk_words, chunk_size=256, chunk_overlap=32).split(text)
    assert max(len(s.text) for s in spans) <= 256 * MAX_CHARS_PER_TOKEN
    assert len(spans) >= 1_000_000 // (256 * MAX_CHARS_PER_TOKEN)
    assert "".join(s.text for s in spans if "z" in s.text).count("z") >= 1_000_000  # nothing lost
