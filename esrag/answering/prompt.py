"""The prompt of a retrieval-augmented answer: the retrieved chunks numbered as sources, fitted into the
model's context window, and the chat messages that carry them.

Pure functions of a token counter (``TokenCounter``: the generator's own when it counts exactly, an estimate
otherwise), so they are tested without a model; ``esrag.answering.rag`` calls them between retrieval and
generation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from esrag.generators.base import Message
from esrag.types import Hit

TokenCounter = Callable[[str], int]

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources given by the user. After each statement, cite "
    "the sources that support it by their numbers in square brackets, like [1] or [2][3]. If the sources "
    "do not contain the answer, say that the sources do not answer the question. Do not use outside "
    "knowledge and do not invent sources."
)
#: A passage cut shorter than this (in tokens) is dropped rather than kept as a fragment.
MIN_PASSAGE_TOKENS = 32
#: Tokens kept free when the generator counts exactly (joins can tokenize a little differently)...
EXACT_MARGIN_TOKENS = 16
#: ...and the fraction of the window kept free when it only estimates.
ESTIMATE_MARGIN = 0.10
PASSAGE_SEPARATOR = "\n\n"
TRUNCATION_MARK = " …"


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk as it was put in the prompt, numbered ``n`` (1-based, in rank order)."""

    n: int
    hit: Hit
    text: str  # the chunk text, possibly truncated to fit
    tokens: int  # tokens of the whole numbered block (header + text)
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        h = self.hit
        return {"n": self.n, "chunk_id": h.id, "doc_id": h.doc_id, "source": h.source, "title": h.title,
                "chunk_index": h.chunk_index, "score": h.score, "tokens": self.tokens,
                "truncated": self.truncated, "text": self.text}


def source_line(n: int, source: str, title: str) -> str:
    """``[n] source`` plus the title when there is one, e.g. ``[2] docs/keys.md — Rotating keys``: a passage's
    header in the prompt, and its line in the ``Sources:`` block printed after the answer."""
    return f"[{n}] {source}" + (f" — {title}" if title and title != source else "")


def passage_header(n: int, hit: Hit) -> str:
    return source_line(n, hit.source, hit.title)


def format_passage(n: int, hit: Hit, text: str) -> str:
    return f"{passage_header(n, hit)}\n{text}"


def prompt_budget(context_tokens: int, max_new_tokens: int, overhead_tokens: int, exact: bool) -> int:
    """Tokens left for the numbered passages: the window minus the answer, the prompt without passages and a
    safety margin (``EXACT_MARGIN_TOKENS``, or ``ESTIMATE_MARGIN`` of the window for estimated counts).
    May be negative when the question alone does not fit."""
    margin = EXACT_MARGIN_TOKENS if exact else max(EXACT_MARGIN_TOKENS, int(context_tokens * ESTIMATE_MARGIN))
    return context_tokens - max_new_tokens - overhead_tokens - margin


def truncate_to_tokens(text: str, max_tokens: int, count: TokenCounter, mark: str = TRUNCATION_MARK) -> str:
    """The longest prefix of ``text``, cut at a word boundary and followed by ``mark``, whose token count
    (mark included) is at most ``max_tokens``. Returns ``text`` itself when it fits, ``""`` when not even one
    word does. Uses O(log n) calls of ``count``."""
    if count(text) <= max_tokens:
        return text
    cuts = [m.start() for m in re.finditer(r"\s+", text)] + [len(text)]
    lo, hi, best = 0, len(cuts) - 1, ""
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = text[: cuts[mid]].rstrip() + mark
        if cuts[mid] > 0 and count(candidate) <= max_tokens:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def fit_passages(
    hits: Sequence[Hit], budget_tokens: int | None, count: TokenCounter, min_tokens: int = MIN_PASSAGE_TOKENS
) -> list[Passage]:
    """Number hits [1]..[n] in rank order, as many as fit into ``budget_tokens`` (None: all of them).

    Whole passages are taken best-first. The first one that does not fit is truncated to the space left if
    at least ``min_tokens`` remain, else dropped, and nothing after it is taken: the prompt always holds a
    best-ranked prefix of the hits. Each passage costs its formatted block plus the separator.
    """
    passages: list[Passage] = []
    used = 0
    sep = count(PASSAGE_SEPARATOR) if hits else 0
    for hit in hits:
        n = len(passages) + 1
        block = format_passage(n, hit, hit.text)
        tokens = count(block) + sep
        if budget_tokens is None or used + tokens <= budget_tokens:
            passages.append(Passage(n, hit, hit.text, tokens))
            used += tokens
            continue
        left = budget_tokens - used - sep - count(passage_header(n, hit) + "\n")
        if left >= min_tokens:
            text = truncate_to_tokens(hit.text, left, count)
            if text:
                passages.append(Passage(n, hit, text, count(format_passage(n, hit, text)) + sep, True))
        break
    return passages


def build_messages(question: str, passages: Sequence[Passage], system_prompt: str = SYSTEM_PROMPT) -> list[Message]:
    """The chat: a system message with the rules, and a user message with the numbered sources then the
    question. Chat templates (local) or the server (openai_compat) turn it into the model's format."""
    sources = PASSAGE_SEPARATOR.join(format_passage(p.n, p.hit, p.text) for p in passages)
    user = f"Sources:\n\n{sources}\n\nQuestion: {question.strip()}"
    return [Message("system", system_prompt), Message("user", user)]
