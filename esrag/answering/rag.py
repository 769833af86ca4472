"""Retrieval-augmented answers: retrieve, fit the passages into the model's context, prompt with numbered
sources, stream the answer, and map its ``[n]`` citations back to the chunks they name.

The prompt (budget arithmetic, truncation, numbered sources, the messages) is built by the pure functions of
``esrag.answering.prompt``; citation parsing is here. ``RagPipeline`` wires them to a ``HybridSearcher`` and a
``Generator``::

    pipeline = RagPipeline(searcher, generator, settings)
    stream = pipeline.stream("how do I rotate the keys?")   # retrieval happens here
    for piece in stream:                                      # generation happens here
        print(piece, end="", flush=True)
    answer = stream.answer                                    # citations, passages, timings

or simply ``answer = pipeline.ask(question)``.

When retrieval finds nothing relevant (no hits, or the best fused score is below ``settings.min_score``)
the answer says so and the LLM is not called.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Generator as PyGenerator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from esrag.answering.checks import SentenceCheck, check_sentence, cited_numbers, find_loop, split_sentences
from esrag.answering.prompt import (
    MIN_PASSAGE_TOKENS,
    SYSTEM_PROMPT,
    Passage,
    build_messages,
    fit_passages,
    prompt_budget,
    source_line,
)
from esrag.config import Settings
from esrag.errors import ConfigError, setting
from esrag.generators.base import Generator, Message
from esrag.retrieval.search import HybridSearcher
from esrag.types import Hit

NO_CONTEXT_ANSWER = (
    "I found nothing relevant to this question in the index, so I cannot answer it from the documents."
)
#: printed (and streamed) after a sentence that no source it cites supports
UNSUPPORTED_MARK = " [unsupported]"
CUT_NOTE = "The answer was cut where it started repeating itself."
NOT_SUPPORTED_NOTE = ("The model's text is not supported by the sources: none of its sentences is backed by the "
                      "passage it cites. Read the sources below instead.")
#: The most passages one answer retrieves (``k``): what a caller can make one answer cost is bounded
#: by this and by the generator's context budget, which decides how many of them the answer reads.
MAX_ANSWER_K = 50


# -- data ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Citation:
    """One ``[n]`` of the answer, resolved to the chunk it names."""

    n: int
    doc_id: str
    source: str
    chunk_id: str
    title: str

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "doc_id": self.doc_id, "source": self.source, "chunk_id": self.chunk_id,
                "title": self.title}


@dataclass(frozen=True)
class Timings:
    """Milliseconds, measured with ``time.perf_counter``.

    ``model_load_ms``: loading the generator's model (reported by the first answer of that generator object
    only; 0 after, and for generators without a model); ``model_converted``: that load converted the model
    first (a GGUF file on first use). ``embedder_load_ms``: loading the retrieval embedder, when this answer
    loaded it. ``retrieval_ms``: embed + store + fuse (the embedder's load excluded). ``ttft_ms``: from
    handing the prompt to the generator to its first non-empty piece of text (None when nothing was
    generated). ``generation_ms``: the whole generator call. ``total_ms``: the whole ask, retrieval included,
    model loads excluded. ``tokens``: answer tokens as the backend counted them (else the generator's
    tokenizer or estimate). ``tokens_per_s``: ``tokens`` over ``generation_ms`` (prompt processing included),
    None when nothing was generated.
    """

    retrieval_ms: float = 0.0
    ttft_ms: float | None = None
    generation_ms: float = 0.0
    total_ms: float = 0.0
    tokens: int = 0
    tokens_per_s: float | None = None
    prompt_tokens: int = 0
    model_load_ms: float = 0.0
    model_converted: bool = False
    embedder_load_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model_load_ms": self.model_load_ms, "model_converted": self.model_converted,
                "embedder_load_ms": self.embedder_load_ms, "retrieval_ms": self.retrieval_ms,
                "ttft_ms": self.ttft_ms, "generation_ms": self.generation_ms,
                "total_ms": self.total_ms, "tokens": self.tokens, "tokens_per_s": self.tokens_per_s,
                "prompt_tokens": self.prompt_tokens}


@dataclass(frozen=True)
class Answer:
    """The outcome of one question.

    ``citations`` are the valid ``[n]`` of ``text`` in order of first appearance; ``invalid_citations`` the
    numbers that named no passage. ``retrieved`` is every hit retrieval returned, ``passages`` the ones that
    fitted into the prompt. ``no_context`` is True when nothing relevant was retrieved and the LLM was not
    called. ``generator`` is None for retrieval only (``--generator none``). ``constrained_citations`` is True
    when the generator's decoding made every sentence cite a source (the model chose which).

    ``sentences``: every sentence of ``text`` checked against the sources (``esrag.answering.checks``): cited
    source, support score, supported. ``cut``: why the text was cut short (``"loop"``: it started repeating
    itself), else None. ``notes``: what the reader must know about the answer (cut, unsupported sentences),
    as sentences to print after it. ``display_text``: ``text`` with ``UNSUPPORTED_MARK`` after each
    unsupported sentence, as streamed.
    """

    question: str
    text: str
    citations: list[Citation] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)
    retrieved: list[Hit] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    no_context: bool = False
    generator: str | None = None
    model: str | None = None
    constrained_citations: bool = False
    sentences: list[SentenceCheck] = field(default_factory=list)
    cut: str | None = None
    notes: list[str] = field(default_factory=list)
    display_text: str = ""

    @property
    def unsupported(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if not s.supported]

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question, "answer": self.text, "no_context": self.no_context, "cut": self.cut,
            "notes": self.notes, "sentences": [s.to_dict() for s in self.sentences],
            "unsupported_sentences": len(self.unsupported),
            "generator": self.generator, "model": self.model,
            "constrained_citations": self.constrained_citations,
            "citations": [c.to_dict() for c in self.citations], "invalid_citations": self.invalid_citations,
            "passages": [p.to_dict() for p in self.passages], "retrieved": len(self.retrieved),
            "timings": self.timings.to_dict(),
        }


@dataclass(frozen=True)
class Prepared:
    """What will be sent: the messages, the passages in them, and the budget they were fitted to."""

    messages: list[Message]
    passages: list[Passage]
    budget_tokens: int | None  # None: no budget (retrieval only)
    prompt_tokens: int = 0  # the whole prompt, chat template included (0 without a generator)


# -- pure functions --------------------------------------------------------------------------------------


def is_relevant(hits: Sequence[Hit], min_score: float) -> bool:
    """Whether retrieval found something worth answering from: any hit, and the best fused score reaches
    ``min_score`` (on the scale of the fusion used: linear is 0 for a chunk neither side returned and above
    0 for any other, at most 1 with minmax; RRF ~1/60 per list)."""
    return bool(hits) and hits[0].score >= min_score


def parse_citations(text: str, n_passages: int) -> tuple[list[int], list[int]]:
    """The source numbers cited in ``text``: (valid, invalid), each unique and in order of first appearance.

    Understands ``[1]``, ``[1, 3]``, ``[1;3]`` and ranges ``[2-4]``/``[2–4]``. A number outside
    1..``n_passages`` is invalid. Brackets holding anything else (``[a]``, ``[1.5]``, ``[]``) are ignored.
    Ranges longer than ``n_passages`` are not expanded (a year range like ``[1990-2020]`` is not 31
    citations): their two ends are checked instead.
    """
    valid: list[int] = []
    invalid: list[int] = []
    for number in cited_numbers(text, max(n_passages, 1)):
        bucket = valid if 1 <= number <= n_passages else invalid
        if number not in bucket:
            bucket.append(number)
    return valid, invalid


def resolve_citations(numbers: Sequence[int], passages: Sequence[Passage]) -> list[Citation]:
    """Citation records for valid numbers (numbers without a passage are skipped)."""
    by_n = {p.n: p for p in passages}
    return [Citation(n, by_n[n].hit.doc_id, by_n[n].hit.source, by_n[n].hit.id, by_n[n].hit.title)
            for n in numbers if n in by_n]


def format_sources(citations: Sequence[Citation]) -> str:
    """The ``Sources:`` block printed after an answer, one cited chunk per line ('' when none)."""
    if not citations:
        return ""
    return "Sources:\n" + "\n".join(source_line(c.n, c.source, c.title) for c in citations)


# -- the pipeline ----------------------------------------------------------------------------------------


class AnswerStream:
    """An iterator of answer text pieces; ``answer`` holds the full Answer once it is exhausted.

    Made by ``RagPipeline.stream`` after retrieval; generation runs as it is iterated. Closing it early
    (``close()``) stops the generator. A backend failure raises GeneratorError from iteration, with the text
    produced so far in ``partial``. Without a generator, or without relevant context, the LLM is not called:
    the stream yields nothing (retrieval only) or the single ``NO_CONTEXT_ANSWER`` piece.
    """

    def __init__(
        self,
        question: str,
        generator: Generator | None,
        prepared: Prepared,
        retrieved: list[Hit],
        relevant: bool,
        started: float,
        retrieval_ms: float,
        force_citations: bool = False,
        embedder: Any = None,
        support_threshold: float = 0.5,
        stop_on_loop: bool = True,
        loads: dict[str, Any] | None = None,
    ) -> None:
        self.question = question
        self.generator = generator
        self.prepared = prepared
        self.retrieved = retrieved
        self.relevant = relevant
        self._started = started
        self._retrieval_ms = retrieval_ms
        self.constrained = bool(force_citations and generator is not None
                                and getattr(generator, "constrains_citations", False) and prepared.passages)
        self._answer: Answer | None = None
        self._embedder = embedder
        self._passage_vectors: Any = None
        self._threshold = support_threshold
        self._stop_on_loop = stop_on_loop
        self._loads = loads or {}
        self._pieces = self._run()

    @property
    def passages(self) -> list[Passage]:
        return self.prepared.passages

    @property
    def retrieval_ms(self) -> float:
        return self._retrieval_ms

    def ms_since_retrieval(self) -> float:
        """Milliseconds since retrieval finished (what the API reports when it sends the sources)."""
        return (time.perf_counter() - self._started) * 1e3 - self._retrieval_ms

    @property
    def answer(self) -> Answer:
        """The finished Answer; raises RuntimeError while the stream has not been consumed."""
        if self._answer is None:
            raise RuntimeError("the answer is not complete: iterate the stream to the end first")
        return self._answer

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def _finish(self, text: str, timings: Timings, citations: list[Citation] | None = None,
                invalid: list[int] | None = None, checks: list[SentenceCheck] | None = None,
                cut: str | None = None, display: str | None = None) -> None:
        g = self.generator
        checks = checks or []
        notes = []
        if cut == "loop":
            notes.append(CUT_NOTE)
        bad = [c for c in checks if not c.supported]
        if checks and len(bad) == len(checks):
            notes.append(NOT_SUPPORTED_NOTE)
        elif bad:
            notes.append(f"{len(bad)} of {len(checks)} sentences are not supported by the sources they cite "
                         f"(marked{UNSUPPORTED_MARK}).")
        self._answer = Answer(
            question=self.question, text=text, citations=citations or [], invalid_citations=invalid or [],
            passages=self.prepared.passages, retrieved=self.retrieved, timings=timings,
            no_context=not self.relevant, generator=g.name if g is not None else None,
            model=g.model if g is not None else None, constrained_citations=self.constrained,
            sentences=checks, cut=cut, notes=notes, display_text=text if display is None else display,
        )

    def _check(self, sentence: Any) -> SentenceCheck:
        texts = [p.text for p in self.prepared.passages]
        check = check_sentence(sentence, texts, self._threshold)
        if check.supported or self._embedder is None:  # a cosine can only raise the score: not needed
            return check
        cosines = None
        if self._embedder is not None:
            if self._passage_vectors is None:
                self._passage_vectors = self._embedder.embed_documents(texts)
            cosines = [float(x) for x in self._passage_vectors @ self._embedder.embed_query(sentence.text)]
        return check_sentence(sentence, texts, self._threshold, cosines)

    def _run(self) -> PyGenerator[str, None, None]:
        g = self.generator
        if g is None or not self.relevant:
            text = "" if g is None else NO_CONTEXT_ANSWER
            if text:
                yield text
            total_ms = (time.perf_counter() - self._started) * 1e3
            self._finish(text, Timings(retrieval_ms=self._retrieval_ms, total_ms=total_ms, **self._loads))
            return
        buf, emitted, cut = "", 0, None
        checks: list[SentenceCheck] = []
        shown: list[str] = []
        ttft_ms: float | None = None
        t_gen = time.perf_counter()
        if self.constrained:
            pieces = g.stream(self.prepared.messages, sources=len(self.prepared.passages),  # type: ignore[call-arg]
                              passage_texts=[p.text for p in self.prepared.passages], question=self.question)
        else:
            pieces = g.stream(self.prepared.messages)
        try:
            for piece in pieces:
                if ttft_ms is None and piece:
                    ttft_ms = (time.perf_counter() - t_gen) * 1e3
                buf += piece
                if self._stop_on_loop and (at := find_loop(buf)) is not None:
                    buf, cut = buf[:at].rstrip(), "loop"
                    break
                # sentences before the last one are complete: check them and let them out
                for out in self._release(buf, emitted, checks, final=False):
                    emitted, text = out
                    shown.append(text)
                    yield text
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        for out in self._release(buf, emitted, checks, final=True):
            emitted, text = out
            shown.append(text)
            yield text
        t_end = time.perf_counter()
        text = buf
        tokens = g.last_completion_tokens if g.last_completion_tokens is not None else g.count_tokens(text)
        generation_ms = (t_end - t_gen) * 1e3
        valid, invalid = parse_citations(text, len(self.prepared.passages))
        timings = Timings(
            retrieval_ms=self._retrieval_ms, ttft_ms=ttft_ms, generation_ms=generation_ms,
            total_ms=(time.perf_counter() - self._started) * 1e3, tokens=tokens,
            tokens_per_s=tokens / (generation_ms / 1e3) if tokens and generation_ms > 0 else None,
            prompt_tokens=self.prepared.prompt_tokens, **self._loads,
        )
        self._finish(text, timings, resolve_citations(valid, self.prepared.passages), invalid, checks, cut,
                     "".join(shown))

    def _release(self, buf: str, emitted: int, checks: list[SentenceCheck], final: bool
                 ) -> list[tuple[int, str]]:
        """The text after ``emitted`` that can be shown now, sentence by sentence, each followed by
        ``UNSUPPORTED_MARK`` when the check fails (and appended to ``checks``): complete sentences only,
        unless ``final``. Returns (new emitted offset, text) pairs."""
        sentences = [s for s in split_sentences(buf) if s.end > emitted]
        if not final:
            sentences = sentences[:-1]
        out = []
        for s in sentences:
            check = self._check(s)
            checks.append(check)
            segment = buf[emitted:s.end]
            if not check.supported:  # the mark goes after the sentence, before the line break ending it
                body = segment.rstrip()
                segment = body + UNSUPPORTED_MARK + segment[len(body):]
            out.append((s.end, segment))
            emitted = s.end
        if final and emitted < len(buf):
            out.append((len(buf), buf[emitted:]))
        return out


def finish(stream: Iterator[str]) -> Answer:
    """Run an answer stream (an ``AnswerStream``, or the engine's wrapper of one) to its end and return its
    Answer; the stream is closed however that ends, so a failure stops the generator and frees it."""
    try:
        for _ in stream:
            pass
    finally:
        stream.close()  # type: ignore[attr-defined]
    answer: Answer = stream.answer  # type: ignore[attr-defined]
    return answer


class RagPipeline:
    """Answers questions from one searcher with one generator (None: retrieval only)."""

    def __init__(
        self,
        searcher: HybridSearcher,
        generator: Generator | None,
        settings: Settings,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        self.searcher = searcher
        self.generator = generator
        self.settings = settings
        self.system_prompt = system_prompt

    def retrieve(self, question: str, **search_kwargs: Any) -> list[Hit]:
        """The top ``settings.rag_k`` hits (``k=`` overrides), best first. Other keyword arguments go to
        ``HybridSearcher.search`` (mode, alpha, fusion, normalization, doc_weight, filters, candidates).
        ConfigError when k is over ``MAX_ANSWER_K``."""
        k = search_kwargs.get("k") or self.settings.rag_k
        if k > MAX_ANSWER_K:
            raise ConfigError(f"k: an answer retrieves at most {MAX_ANSWER_K} passages (got {k})")
        search_kwargs["k"] = k
        return self.searcher.search(question, **search_kwargs).hits

    def prepare(self, question: str, hits: Sequence[Hit]) -> Prepared:
        """Fit ``hits`` into the generator's context and build the messages. Raises ConfigError when the
        question is empty, or when it and the reserved answer leave no room for even a short passage."""
        if not question.strip():
            raise ConfigError("the question is empty", field="question")
        g = self.generator
        if g is None:
            passages = fit_passages(hits, None, lambda s: 0)
            return Prepared(build_messages(question, passages, self.system_prompt), passages, None)
        overhead = g.count_prompt_tokens(build_messages(question, [], self.system_prompt))
        budget = prompt_budget(g.context_tokens, g.max_new_tokens, overhead, g.exact_token_counts)
        if hits and budget < MIN_PASSAGE_TOKENS:
            raise ConfigError(
                f"no room for sources: the model's context is {g.context_tokens} tokens, the answer reserves "
                f"{g.max_new_tokens} ({setting('max_new_tokens')}) and the question with the instructions takes "
                f"{overhead}; lower {setting('max_new_tokens')} or shorten the question", field="question"
            )
        passages = fit_passages(hits, budget, g.count_tokens)
        messages = build_messages(question, passages, self.system_prompt)
        return Prepared(messages, passages, budget, g.count_prompt_tokens(messages))

    def stream(self, question: str, **search_kwargs: Any) -> AnswerStream:
        """Retrieve and build the prompt now (errors surface here); generate as the stream is iterated.

        Sentences are checked against the passages they cite (with the retrieval embedder's cosine when
        retrieval has one) and streamed once complete; with ``settings.stop_on_loop`` the answer is cut where
        it starts repeating itself."""
        loads: dict[str, Any] = {}
        embedder = getattr(self.searcher, "embedder", None)
        if embedder is not None and not getattr(embedder, "loaded", True) and search_kwargs.get(
                "mode", self.settings.mode) != "bm25":
            t0 = time.perf_counter()
            embedder.get()  # type: ignore[attr-defined]  # a LazyEmbedder: load it outside retrieval's time
            loads["embedder_load_ms"] = (time.perf_counter() - t0) * 1e3
        loads.update(_model_load(self.generator))
        started = time.perf_counter()
        hits = self.retrieve(question, **search_kwargs)
        retrieval_ms = (time.perf_counter() - started) * 1e3
        relevant = is_relevant(hits, self.settings.min_score)
        prepared = self.prepare(question, hits if relevant else [])
        checker = embedder if embedder is not None and getattr(embedder, "loaded", True) else None
        return AnswerStream(question, self.generator, prepared, list(hits), relevant, started, retrieval_ms,
                            force_citations=self.settings.force_citations, embedder=checker,
                            support_threshold=self.settings.support_threshold,
                            stop_on_loop=self.settings.stop_on_loop, loads=loads)

    def ask(self, question: str, **search_kwargs: Any) -> Answer:
        """The whole Answer (streamed internally, so ``ttft_ms`` is measured too)."""
        return finish(self.stream(question, **search_kwargs))


_load_reported: weakref.WeakSet[Any] = weakref.WeakSet()
_load_lock = threading.Lock()


def _model_load(generator: Generator | None) -> dict[str, Any]:
    """The generator's load time and whether it converted its model, for the first answer it gives only."""
    if generator is None:
        return {}
    with _load_lock:
        if generator in _load_reported:
            return {}
        try:
            _load_reported.add(generator)
        except TypeError:  # not weakly referenceable: report nothing rather than a stale figure forever
            return {}
    seconds = getattr(generator, "load_seconds", None)
    converted = getattr(generator, "loaded_from_cache", None) is False
    return {"model_load_ms": seconds * 1e3 if isinstance(seconds, (int, float)) else 0.0,
            "model_converted": converted}
