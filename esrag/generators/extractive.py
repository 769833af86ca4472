"""The ``extractive`` generator: no LLM. The answer is the retrieved passages' own sentences that best answer
the question, each followed by the ``[n]`` of the passage it was taken from.

How sentences are picked (``select_sentences``, pure):

1. the passages are cut into sentences (``candidate_sentences``: prose and list items, wrapped lines
   joined, table rows as one each; headings, code, and fragments that cannot stand alone (``quotable``) are left out);
2. each sentence's relevance is the mean of its cosine to the question (with the retrieval embedder, when
   the pipeline hands one over; see ``Generator.wants_embedder``) and the share of the question's content
   words it contains; without an embedder, the share alone. A small bonus for the passage's rank keeps ties
   on the better-ranked passage;
3. maximal marginal relevance picks up to ``MAX_SENTENCES``: each next sentence maximises
   ``LAMBDA * relevance - (1 - LAMBDA) * max similarity to those already picked`` (cosine, or word overlap
   without an embedder), so the answer is not five copies of one idea. A sentence scoring under
   ``MIN_RELEVANCE``, or under ``RELATIVE_CUTOFF`` of the best one, is never picked after the first.

Sentences are quoted verbatim, so every one is supported by the passage it cites. The answerer reads only
the passages that fit its context budget (``CONTEXT_TOKENS``, enforced by esrag.answering.rag before anything is
embedded: about 8 chunks of 256 tokens, every passage at the default ``rag_k`` of 5), so the work one answer
causes is bounded whatever ``k`` retrieved. On a CPU, that is one embedding call of at most ~100 short
sentences with MiniLM (tens to a few hundred ms), which the embedder runs in short slices behind waiting
queries (esrag.embedders.lanes), so searches do not wait for it. Thread-safe: it holds no state besides the
embedder, which serialises its own calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from esrag.answering.checks import LIST_MARK_RE, content_words, split_sentences
from esrag.config import Settings
from esrag.generators.base import Generator, Message

MAX_SENTENCES = 4
#: the context the answerer reads, in estimated tokens (esrag.generators.base.estimate_tokens): its
#: ``context_tokens`` is this plus ``max_new_tokens`` (which esrag.answering.rag reserves for the answer), and
#: esrag.answering.rag fits the passages into it, less the question and a margin, before anything is embedded
CONTEXT_TOKENS = 4096
LAMBDA = 0.7
MIN_WORDS = 4
MIN_RELEVANCE = 0.25
#: ...nor one scoring under this share of the best sentence's relevance
RELATIVE_CUTOFF = 0.6
RANK_BONUS = 0.02
#: passed over for a candidate: headings, code fences, table rules, HTML comments
_SKIP_RE = re.compile(r"^\s*(?:#{1,6}\s|```|~~~|\|?\s*:?-{3,}|<!--)")

class Embed(Protocol):
    """What ``select_sentences`` needs of an embedder (esrag.embedders.base.Embedder has it): L2-normalised
    rows, the query with the model's query prefix, passages with its passage prefix."""

    def embed_query(self, text: str) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Candidate:
    """A sentence of passage ``n`` (1-based), as quoted."""

    n: int
    text: str


def candidate_sentences(passages: Sequence[str]) -> list[Candidate]:
    """The quotable sentences of each passage, in order, without duplicates (the first passage keeps one)."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for n, passage in enumerate(passages, 1):
        for body in paragraphs(passage):
            for s in split_sentences(body):
                text = s.text.strip()
                key = text.lower()
                if quotable(text) and key not in seen:
                    seen.add(key)
                    out.append(Candidate(n, text))
    return out


def quotable(sentence: str) -> bool:
    """Whether a sentence can stand alone in an answer: ``MIN_WORDS`` words or more, balanced backticks (an
    odd count means a chunk boundary cut it), and not a lead-in to a list or block (ending with ``:``)."""
    return (len(sentence.split()) >= MIN_WORDS and sentence.count("`") % 2 == 0
            and not sentence.rstrip().endswith(":") and not sentence.lstrip().startswith(("-", ",", ")", ".")))


def paragraphs(text: str) -> list[str]:
    """The prose of a markdown text as one string per paragraph, list item or table row, hard-wrapped
    lines joined; headings, code blocks and table rules left out."""
    out: list[str] = []
    current: list[str] = []
    in_code = False

    def flush() -> None:
        if current:
            out.append(" ".join(current))
            current.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            in_code = not in_code
            flush()
            continue
        if in_code or not stripped or _SKIP_RE.match(line):
            flush()
            continue
        if stripped.startswith("|"):  # a table row is one candidate: its cells, outer pipes dropped
            flush()
            out.append(stripped.strip("|").strip())
            continue
        if LIST_MARK_RE.match(line):
            flush()
            stripped = LIST_MARK_RE.sub("", line).strip()
        current.append(stripped)
    flush()
    return out


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a) if a else 0.0


def select_sentences(question: str, passages: Sequence[str], embed: Embed | None = None,
                     max_sentences: int = MAX_SENTENCES) -> list[Candidate]:
    """The sentences that best answer ``question``, most relevant first (see the module docstring).

    ``embed``: an embedder (None: word overlap only). Empty when the passages hold no quotable sentence.
    """
    candidates = candidate_sentences(passages)
    if not candidates:
        return []
    q_words = set(content_words(question))
    words = [set(content_words(c.text)) for c in candidates]
    lexical = np.array([_overlap(q_words, w) for w in words])
    if embed is not None:
        vectors = embed.embed_documents([c.text for c in candidates])
        cosine = vectors @ embed.embed_query(question)
        similarity = vectors @ vectors.T
        relevance = (lexical + np.clip(cosine, 0.0, 1.0)) / 2
    else:
        similarity = np.array([[len(a & b) / max(1, len(a | b)) for b in words] for a in words])
        relevance = lexical
    relevance = relevance + RANK_BONUS / np.array([c.n for c in candidates])
    floor = max(MIN_RELEVANCE, RELATIVE_CUTOFF * float(relevance.max()))
    picked: list[int] = []
    while len(picked) < min(max_sentences, len(candidates)):
        best, best_value = -1, -np.inf
        for i in range(len(candidates)):
            if i in picked or (picked and relevance[i] < floor):
                continue
            redundancy = max((similarity[i, j] for j in picked), default=0.0)
            value = LAMBDA * relevance[i] - (1 - LAMBDA) * redundancy
            if value > best_value:
                best, best_value = i, value
        if best < 0:
            break
        picked.append(best)
    return [candidates[i] for i in picked]


def format_answer(sentences: Sequence[Candidate]) -> str:
    """``sentence.[n] sentence.[m]``: each quoted sentence, ended if it was not, with its citation."""
    parts = []
    for c in sentences:
        text = c.text if c.text[-1:] in ".!?" else c.text.rstrip(";,") + "."
        parts.append(f"{text}[{c.n}]")
    return " ".join(parts)


class ExtractiveGenerator(Generator):
    """Answers by quoting the passages (see the module docstring). ``embedder``: set by the engine (the
    retrieval embedder); None works too, by word overlap alone."""

    name = "extractive"
    model = "extractive"
    constrains_citations = True
    wants_embedder = True
    concurrent = True

    def __init__(self, settings: Settings) -> None:
        self.max_new_tokens = settings.max_new_tokens
        #: bounds the sentences embedded per answer (see the module docstring)
        self.context_tokens = CONTEXT_TOKENS + self.max_new_tokens
        self.embedder = None

    def stream(self, messages: Sequence[Message], sources: int = 0, passage_texts: Sequence[str] | None = None,
               question: str = "") -> Iterator[str]:
        """Yield the whole answer as one piece. Without ``passage_texts`` (a pipeline that does not pass
        them) there is nothing to quote and the answer is empty."""
        if not passage_texts:
            return
        picked = select_sentences(question or _question_of(messages), passage_texts, self.embedder)
        text = format_answer(picked)
        self.last_completion_tokens = self.count_tokens(text)
        if text:
            yield text


def _question_of(messages: Sequence[Message]) -> str:
    """The question from the prompt's last user message (``... Question: <q>``), for callers that did not
    pass it."""
    user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    return user.rsplit("Question:", 1)[-1].strip()
