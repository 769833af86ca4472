"""The Generator interface: chat messages in, answer text out (streamed or whole).

Implementations are found through the ``esrag.generators`` entry points (``openai_compat``,
``transformers_local``, ``extractive``); each is a callable ``(settings) -> Generator``. Loading a generator
may be slow (a local model) but constructing one never talks to a server: the first request does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: Context window assumed when a backend cannot tell (a conservative size every current chat model has).
DEFAULT_CONTEXT_TOKENS = 2048
#: Tokens a chat template adds per message (role markers, separators) when it cannot be measured.
TEMPLATE_TOKENS_PER_MESSAGE = 8


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


def messages_to_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The OpenAI/transformers wire shape: ``[{"role": ..., "content": ...}, ...]``."""
    return [{"role": m.role, "content": m.content} for m in messages]


def estimate_tokens(text: str) -> int:
    """A deliberately high token estimate for text we cannot tokenize: one token per 3 UTF-8 bytes.

    Real BPE tokenizers give ~4-5 bytes per token for English and ~3 bytes (one CJK character) for CJK, so
    this over-counts English by about a third. Over-counting wastes some context; under-counting would
    overflow it, which servers answer with an error.
    """
    return max(1, math.ceil(len(text.encode("utf-8")) / 3)) if text else 0


class Generator(ABC):
    """Subclasses implement ``stream``; ``generate`` joins it.

    Attributes:
        name: the registered plugin name.
        model: the model actually used (a hub id, a path, or what the server reports).
        context_tokens: the model's context window in tokens (prompt + answer), used by rag.py to size the
            prompt.
        max_new_tokens: the most tokens one answer may have; rag.py reserves them out of the window.
        exact_token_counts: whether ``count_tokens`` uses the model's own tokenizer (False: an estimate).
        last_completion_tokens: tokens of the last finished (or failed) answer, as counted by the backend;
            None when it did not say.
    """

    name: str
    model: str
    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    max_new_tokens: int = 512
    exact_token_counts: bool = False
    last_completion_tokens: int | None = None
    #: whether ``stream``/``generate`` accept ``sources=n, passage_texts=[...], question=...`` (the number of
    #: numbered sources, their texts in order, the question) and then make the sentences they can ground
    #: cite the sources that support them (by constraining decoding, see esrag/generators/citations.py, or
    #: by quoting them, see esrag/generators/extractive.py)
    constrains_citations: bool = False
    #: whether the generator wants the retrieval embedder: the pipeline's owner (esrag.engine) then sets
    #: ``embedder`` to it (an esrag.embedders.base.Embedder) after construction, before the first answer;
    #: the generator must work, less well, with ``embedder`` None
    wants_embedder: bool = False
    embedder: Any = None
    #: whether two threads may call ``stream``/``generate`` at once (False: the engine queues answers)
    concurrent: bool = False

    @abstractmethod
    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        """Yield pieces of the answer as they are produced. Raises GeneratorError (with the partial answer)
        if the backend fails. Closing the iterator early stops the generation."""

    def generate(self, messages: Sequence[Message]) -> str:
        """The whole answer at once. Backends may override with a non-streaming call."""
        return "".join(self.stream(messages))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's tokenizer; see ``estimate_tokens`` for backends without one."""
        return estimate_tokens(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens the whole prompt takes once the chat template is applied (template markers included)."""
        return sum(self.count_tokens(m.content) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, GPU memory)."""
