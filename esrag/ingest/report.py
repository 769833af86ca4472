"""What an ingest did: ``IngestReport``, and ``IngestAborted`` for a run that stopped early."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from esrag.errors import EsragError
from esrag.sources.loaders import Skipped
from esrag.types import WriteError


@dataclass
class IngestReport:
    """What an ingest did. ``ok`` is False when any chunk failed to write or the run was aborted.

    ``files`` counts the files a files source found (0 for other sources); ``documents`` the documents
    (or records) the source yielded. ``documents_gone`` counts the source's stored documents that this run
    did not produce and that are gone from it (files gone, moved, now empty, skipped or unreadable; records
    deleted or no longer matching the query); ``documents_removed`` those of them deleted by ``prune``.
    Documents a source supersedes (the earlier forms of a large text file read in segments) are not gone but
    replaced (see ``esrag.ingest.pipeline``): deleted in any case, their chunks counted in ``chunks_deleted``.
    ``aborted`` is the reason a run stopped early ("" if it did not); ``documents_not_written`` are then the
    documents whose new chunks were planned but not (all) written.
    """

    files: int = 0
    documents: int = 0
    documents_new: int = 0
    documents_changed: int = 0
    documents_unchanged: int = 0
    documents_gone: int = 0
    documents_removed: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_unchanged: int = 0
    chunks_deleted: int = 0
    decode_errors: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[WriteError] = field(default_factory=list)
    aborted: str = ""
    documents_not_written: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.aborted

    @property
    def nothing_found(self) -> bool:
        """True when there was nothing to load at all (no file under the paths, no document given; nothing
        was read, written or deleted)."""
        return self.files == 0 and self.documents == 0 and self.documents_removed == 0

    @property
    def exit_code(self) -> int:
        """0 when done (skipped files are listed, not failures), 1 when a write failed or the run was
        aborted, 2 when there was nothing to ingest."""
        if not self.ok:
            return 1
        return 2 if self.nothing_found else 0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "aborted": self.aborted,
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name in _COUNTS},
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "warnings": list(self.warnings),
            "errors": [{"chunk_id": e.chunk_id, "source": e.source, "reason": e.reason, "status": e.status}
                       for e in self.errors],
            "documents_not_written": list(self.documents_not_written),
            "seconds": round(self.seconds, 3),
            "chunks_per_s": round(self.chunks_per_s, 2),
        }


#: the counters of IngestReport (its int fields), in the order they are declared and reported
_COUNTS = frozenset(f.name for f in fields(IngestReport) if f.type in ("int", int))


class IngestAborted(EsragError):
    """An ingest stopped early (the store failed, or another unexpected error); ``report`` is the partial
    report: what was written, and what was not."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report
