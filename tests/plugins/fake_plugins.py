"""Deterministic third-party plugins for tests, installed through a .dist-info (see ``fake_distribution``).

``HashedBagOfWords``: an embedder with no model, vectors from hashed lowercase words (so texts sharing
words are near each other). ``NotesSource``: a source of ``count`` numbered notes under ``notes:``.
``EchoCiter``: a generator that answers with the first sentence of its first
source and cites it, so a test can check the whole ask path without an LLM.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from esrag import plugins
from esrag.embedders.base import Embedder
from esrag.generators.base import Generator, Message
from esrag.sources.base import BaseSource, Item, Progress
from esrag.types import Document

WORD = re.compile(r"\w+")


class HashedSettings(BaseModel):
    dims: int = 64


class HashedBagOfWords(Embedder):
    """Thread-safe: pure numpy on immutable state."""

    def __init__(self, settings: Any) -> None:
        own = plugins.plugin_settings(settings, plugins.EMBEDDERS, "hashed", HashedSettings)
        self.dims = own.dims
        self.model_name = f"hashed-bow-{self.dims}"
        self.max_tokens = 10_000
        self.calls = 0

    def _tokens(self, text: str) -> list[str]:
        return WORD.findall(text.lower())

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in self._tokens(text):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[i, h % self.dims] += 1.0
            norm = float(np.linalg.norm(out[i]))
            out[i] = out[i] / norm if norm else out[i]
            if not norm:
                out[i, 0] = 1.0
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self._tokens(t)) for t in texts]


def hashed_model_name(settings: Any) -> str:
    return f"hashed-bow-{plugins.plugin_settings(settings, plugins.EMBEDDERS, 'hashed', HashedSettings).dims}"


class EchoCiter(Generator):
    name = "echo"
    model = "echo-citer"
    concurrent = True

    def __init__(self, settings: Any) -> None:
        self.max_new_tokens = settings.max_new_tokens

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        user = messages[-1].content
        match = re.search(r"^\[1\] [^\n]*\n(.+?)(?:\n\[2\] |\n\nQuestion: )", user, re.S | re.M)
        if match is None:
            yield "I found no source."
            return
        prose = " ".join(line for line in match.group(1).splitlines() if line.strip() and not line.startswith("#"))
        first = re.split(r"(?<=[.!?])\s", prose.strip(), maxsplit=1)[0].rstrip(".")
        for word in f"{first} [1].".split(" "):
            yield word + " "


class SerialEchoCiter(EchoCiter):
    """Like EchoCiter, but declares that it cannot answer two questions at once (as an in-process model
    cannot); it records overlapping calls, so a test can prove the engine queues them."""

    name = "echo_serial"
    concurrent = False
    active = 0
    overlaps = 0

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        import time

        type(self).active += 1
        try:
            if type(self).active > 1:
                type(self).overlaps += 1
            for piece in super().stream(messages):
                time.sleep(0.002)
                yield piece
        finally:
            type(self).active -= 1


class SlowSettings(BaseModel):
    log: str = ""  # a file that counts the pieces produced, then says "closed"
    pieces: int = 5000
    delay: float = 0.02


class SlowCounter(Generator):
    """An endless-looking answer (``pieces`` words, ``delay`` seconds apart) that records how far it got in
    the ``log`` file, and ``closed`` when its stream was closed early: a test can see generation stop when
    a streaming client disconnects. In-process-like: one answer at a time."""

    name = "slow"
    model = "slow-counter"
    concurrent = False

    def __init__(self, settings: Any) -> None:
        self.own = plugins.plugin_settings(settings, plugins.GENERATORS, "slow", SlowSettings)
        self.max_new_tokens = settings.max_new_tokens

    def _note(self, text: str) -> None:
        if self.own.log:
            with open(self.own.log, "w", encoding="utf-8") as f:
                f.write(text)

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        import time

        produced = 0
        try:
            for _ in range(self.own.pieces):
                time.sleep(self.own.delay)
                produced += 1
                self._note(str(produced))
                yield "tick "
        except GeneratorExit:
            self._note(f"{produced} closed")
            raise


class NotesSettings(BaseModel):
    count: int = 3


class NotesSource(BaseSource):
    """``count`` notes ``notes:0`` ... (its ``[source.notes]`` table): a third-party source whose documents
    live beside other sources' in one index. Its prune scope is ``notes:``."""

    name = "notes"
    unit = "note"

    def __init__(self, settings: Any, **options: Any) -> None:
        self.count = plugins.plugin_settings(settings, plugins.SOURCES, "notes", NotesSettings).count

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "count": self.count}

    def start(self) -> int:
        return self.count

    def items(self) -> Iterator[Item]:
        for i in range(self.count):
            yield Document(doc_id=f"notes:{i}", source=f"notes://{i}", title=f"Note {i}",
                           text=f"Note number {i} is about lighthouse keeper number {i} and the harbour.")
            yield Progress(i + 1, self.count)

    def scopes(self) -> list[str]:
        return ["notes:"]

    def owns(self, doc_id: str) -> bool:
        return doc_id.startswith("notes:")
