"""Documents already in memory as a source: what the HTTP API's document routes and evaluation corpora
ingest. Each ingest of such a source is a batch of upserts; with a ``scope`` prefix (and ``prune``), the
stored documents under that prefix that the batch did not contain are deleted (a full sync of a corpus
whose ids share a prefix); without one, nothing is ever pruned."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from esrag.sources.base import BaseSource, Item, Progress
from esrag.types import Document


class DocumentsSource(BaseSource):
    """``docs`` as given (each doc_id at most once; ``total``: how many, for progress, when known)."""

    name = "documents"
    unit = "document"

    def __init__(self, docs: Iterable[Document], total: int | None = None, scope: str | None = None) -> None:
        self._docs = docs
        self._total = total
        self._scope = scope

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, **({"scope": self._scope} if self._scope is not None else {})}

    def start(self) -> int | None:
        return self._total

    def items(self) -> Iterator[Item]:
        for i, doc in enumerate(self._docs):
            yield doc
            yield Progress(i + 1, self._total or 0)

    def scopes(self) -> list[str]:
        return [self._scope] if self._scope is not None else []

    def owns(self, doc_id: str) -> bool:
        return self._scope is not None and doc_id.startswith(self._scope)
