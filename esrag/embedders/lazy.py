"""An embedder that loads its model on first use, so commands that embed nothing never pay for a model.

The engine hands this to the ingest and the searcher. ``model_name`` and the prefixes are known from the
settings without loading (when the plugin's factory says how: a ``model_name_for(settings)`` attribute);
``dims``, ``max_tokens``, ``count_tokens`` and the ``embed_*`` methods load the real embedder once, under a
lock, whichever thread asks first. Thread-safe as far as the wrapped embedder is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from esrag.embedders.base import Embedder

if TYPE_CHECKING:
    from esrag.config import Settings


class LazyEmbedder(Embedder):
    def __init__(self, factory: Callable[[Settings], Embedder], settings: Settings) -> None:
        self._factory = factory
        self._settings = settings
        self._real: Embedder | None = None
        self._lock = threading.Lock()
        #: seconds the model took to load (None until it is loaded)
        self.load_seconds: float | None = None
        name_for = getattr(factory, "model_name_for", None)
        self._name: str | None = name_for(settings) if callable(name_for) else None
        self.query_prefix = settings.query_prefix
        self.passage_prefix = settings.passage_prefix

    @property
    def loaded(self) -> bool:
        return self._real is not None

    def get(self) -> Embedder:
        """The real embedder, loaded now if it was not yet."""
        real = self._real
        if real is None:
            with self._lock:
                if self._real is None:
                    t0 = time.perf_counter()
                    self._real = self._factory(self._settings)
                    self.load_seconds = time.perf_counter() - t0
                    self.query_prefix = self._real.query_prefix
                    self.passage_prefix = self._real.passage_prefix
                real = self._real
        return real

    @property
    def model_name(self) -> str:  # type: ignore[override]
        return self._name if self._name is not None and self._real is None else self.get().model_name

    @property
    def dims(self) -> int:  # type: ignore[override]
        return self.get().dims

    @property
    def max_tokens(self) -> int:  # type: ignore[override]
        return self.get().max_tokens

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.get().embed_batch(texts)

    def ready(self) -> None:
        self.get().ready()

    def embed_urgent(self, texts: Sequence[str]) -> np.ndarray:
        return self.get().embed_urgent(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.get().count_tokens(texts)

    def __getattr__(self, name: str) -> Any:  # plugin-specific attributes (device, batch_size...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.get(), name)
