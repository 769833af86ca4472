"""The Generator interface: chat messages in, answer text out (streamed or whole)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


class Generator(ABC):
    """Subclasses implement ``stream``; ``generate`` joins it.

    ``context_tokens`` is the model's context window, used by rag.py to size the prompt; ``count_tokens``
    counts tokens of a text in the model's tokenizer (an estimate is acceptable for remote models).
    """

    name: str
    model: str
    context_tokens: int = 2048

    @abstractmethod
    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        """Yield pieces of the answer as they are produced. Raises GeneratorError (with the partial answer)
        if the backend fails."""

    def generate(self, messages: Sequence[Message]) -> str:
        return "".join(self.stream(messages))

    def count_tokens(self, text: str) -> int:
        # Rough estimate for backends without a local tokenizer: ~4 characters per token.
        return max(1, len(text) // 4)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, GPU memory)."""
