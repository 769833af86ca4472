"""Files and directories as a source: discovery, doc ids, prune scopes and the segments of streamed files.

What is read and how is ``esrag.sources.loaders``' (formats, doc ids relative to the path given, JSON/JSONL
records, binary and oversized files skipped with a reason). This module adds what an ingest needs from a
file source:

- **Prune scope.** Each given path is a scope: a directory ``docs/`` owns every stored id under
  ``docs/``; a file ``a.jsonl`` owns ``a.jsonl`` and its records ``a.jsonl#<record>``. Nothing else.
- **Replacement rule.** A large text file (``STREAM_EXTENSIONS``) is loaded as segments
  ``<doc_id>#part-<hash>`` (``esrag.sources.text_stream``). Once such a file has been read to the end, its stored
  forms that the run did not produce are superseded: the old version of each edited segment, and the
  whole-file document of a file that has grown into segments (or the segments of one that has shrunk below
  the threshold). They are deleted with or without ``prune``. A file that failed part-way supersedes
  nothing.
- **Gone.** Every stored document in scope that the run did not produce (deleted, moved, now empty,
  skipped or unreadable files).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from esrag.config import Settings
from esrag.sources.base import BaseSource, Item, Progress
from esrag.sources.loaders import (
    MAX_FILE_BYTES,
    STREAM_EXTENSIONS,
    Notice,
    Skipped,
    SourceFile,
    discover_sources,
    doc_id_candidates,
    iter_file,
)
from esrag.sources.text_stream import part_owner
from esrag.stores.base import Store
from esrag.types import MetadataValue


class FilesSource(BaseSource):
    """Files under ``paths`` (see ``esrag.sources.loaders`` for formats and doc ids). Missing paths raise
    LoaderError from ``start``, before any write; files that cannot be loaded are Skipped items."""

    name = "files"
    unit = "file"

    def __init__(
        self,
        paths: Sequence[str | Path],
        glob: Sequence[str] = (),
        exclude: Sequence[str] = (),
        metadata: Mapping[str, MetadataValue] | None = None,
        follow_symlinks: bool = False,
        max_file_size: int | None = MAX_FILE_BYTES,
        doc_prefix: str = "",
    ) -> None:
        self.paths = list(paths)
        self.glob = list(glob)
        self.exclude = list(exclude)
        self.metadata = dict(metadata or {})
        self.follow_symlinks = follow_symlinks
        self.max_file_size = max_file_size
        self.doc_prefix = doc_prefix
        self._files: list[SourceFile] = []
        self._skipped: list[Skipped] = []
        self._scopes: list[tuple[str, bool]] = []
        #: text files read to the end: doc id -> whether it was loaded as segments
        self._read_whole: dict[str, bool] = {}

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "paths": [str(p) for p in self.paths]}

    def start(self) -> int:
        self._files, self._skipped = discover_sources(self.paths, glob=self.glob, exclude=self.exclude,
                                                      follow_symlinks=self.follow_symlinks, prefix=self.doc_prefix)
        self._scopes = path_scopes(self.paths, self.doc_prefix)
        self._read_whole = {}
        return len(self._files)

    def items(self) -> Iterator[Item]:
        yield from self._skipped
        if not self._files:
            where = ", ".join(str(p) for p in self.paths)
            selection = f" matching --glob {' '.join(self.glob)}" if self.glob else ""
            yield Notice("", f"nothing to ingest: no supported file{selection} under {where}")
        total = len(self._files)
        for i, source in enumerate(self._files):
            failed = in_parts = any_doc = False
            for item in iter_file(source.path, self.metadata, source.doc_id, self.max_file_size):
                if isinstance(item, Skipped):
                    failed = True
                elif not isinstance(item, Notice):
                    any_doc = True
                    in_parts = in_parts or item.doc_id != source.doc_id
                yield item
            if any_doc and not failed and source.path.suffix.lower() in STREAM_EXTENSIONS:
                self._read_whole[source.doc_id] = in_parts
            yield Progress(i + 1, total)

    def scopes(self) -> list[str]:
        return [prefix for prefix, _ in self._scopes]

    def owns(self, doc_id: str) -> bool:
        return any(doc_id.startswith(prefix) if is_dir else doc_id == prefix or doc_id.startswith(prefix + "#")
                   for prefix, is_dir in self._scopes)

    def superseded(self, doc_id: str) -> bool:
        """One of the segments of a text file read to the end, or the whole-file document of a file now in
        segments."""
        owner = part_owner(doc_id)
        return owner in self._read_whole if owner is not None else self._read_whole.get(doc_id, False)


def from_settings(settings: Settings, **options: Any) -> FilesSource:
    """The ``files`` entry point: ``FilesSource(**options)`` (it has no settings of its own)."""
    return FilesSource(**options)


def path_scopes(paths: Sequence[str | Path], prefix: str) -> list[tuple[str, bool]]:
    """(doc id prefix, is a directory) of each given path: what ``prune`` may consider."""
    out = []
    for given in paths:
        path = Path(given).expanduser().resolve()
        if path.is_dir():
            out.append((prefix + (path.name + "/" if path.name else ""), True))
        else:
            out.append((prefix + path.name, False))
    return out


def documents_for_path(store: Store, path: str | Path, prefix: str = "") -> list[str]:
    """The doc ids the index holds for a file (all records of a JSON/JSONL file), for ``delete --doc``: the
    most specific of ``loaders.doc_id_candidates`` (with ``prefix``) that the index has, as an exact id
    or as ``<id>#<record>``. [] when none matches. Raises IndexNotFoundError (from ``list_documents``) when
    there is no index."""
    for candidate in doc_id_candidates(path):
        for doc_id in dict.fromkeys([prefix + candidate, candidate]):
            found = [d for d in store.list_documents(doc_id) if d == doc_id or d.startswith(doc_id + "#")]
            if found:
                return sorted(found)
    return []


__all__ = ["FilesSource", "documents_for_path", "from_settings", "path_scopes"]
