"""The versions of an embedded (SQLite) index: files beside the live one, swapped by an atomic rename.

Layout in ``sqlite_dir`` for the index ``NAME``:

- ``NAME.db``: the live index, what every store opens. Until the first reindex it is a plain file (version
  1); from then on it is a symbolic link to the live version's file. SQLite resolves the link when it
  opens the file, so each version keeps its own ``-wal``/``-shm`` files next to it.
- ``NAME.vN.db``: version N, complete (live, or kept for ``--rollback``).
- ``NAME.vN.building.db``: version N while a reindex fills it (or left half-built by a killed one).
- ``NAME.reindex``: the freeze note of a reindex under way (its pid, host and target).

The swap writes a new link under a temporary name and renames it over ``NAME.db`` (``os.replace``: atomic
on POSIX): a process opening ``NAME.db`` gets the old version or the new one, never none, and connections
already open keep reading the file they opened until they are closed. The first swap also gives the old
plain file its version name by a hard link (same file, so open connections are not disturbed), after a
full checkpoint so that its content is all in the file and none in ``NAME.db-wal``.

Writes are frozen during a reindex by the note plus a write transaction held on the live file:
``check_writable`` (called by the store before each write) refuses a write while a live process holds the
note, and the held transaction makes a writer that checked just before the note appeared finish first, so
the snapshot the reindex copies has every write that was accepted. The note of a process that died is
ignored by writers and removed by the next reindex.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from esrag.errors import ConfigError, CorruptStoreError, ReindexInProgressError, StoreError
from esrag.stores import sqlite_sql as sql
from esrag.stores.base import IndexVersion
from esrag.types import Chunk, EmbeddedChunk

if TYPE_CHECKING:
    from esrag.config import Settings
    from esrag.stores.sqlite import SQLiteStore

#: the columns ``stream_chunks`` reads, in this order
_STREAM_SQL = ('SELECT id, doc_id, source, title, chunk_index, chunk_count, section, start, "end", doc_sha, '
               "chunk_sha, metadata, embedding, text, context FROM chunks ORDER BY rowid")


def version_file(live: Path, number: int, building: bool = False) -> Path:
    """``NAME.vN.db`` (or ``NAME.vN.building.db``) beside ``live`` (``NAME.db``)."""
    return live.with_name(f"{live.stem}.v{number}{'.building' if building else ''}.db")


def note_file(live: Path) -> Path:
    return live.with_name(f"{live.stem}.reindex")


def parse_version(live: Path, name: str) -> tuple[int, bool] | None:
    """(N, building) of a version file's name beside ``live``, else None. N is compared as a number."""
    m = re.fullmatch(re.escape(live.stem) + r"\.v([1-9][0-9]{0,8})(\.building)?\.db", name)
    return (int(m.group(1)), m.group(2) is not None) if m else None


def file_token(path: Path) -> str | None:
    """``device:inode`` of the file ``path`` resolves to (through the link), None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def holder_alive(note: dict[str, Any]) -> bool:
    """Whether the process that wrote a freeze note still runs (one on another host is assumed to)."""
    if note.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(note.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def read_note(live: Path) -> dict[str, Any] | None:
    try:
        note = json.loads(note_file(live).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def check_writable(live: Path) -> None:
    """ReindexInProgressError when a running reindex froze the index at ``live`` (see the module
    docstring); a note left by a process that died is ignored."""
    note = read_note(live)
    if note is not None and holder_alive(note):
        raise ReindexInProgressError(
            f"the index at {live} is being rebuilt by `esrag reindex` (pid {note.get('pid')}, into "
            f"{note.get('target')}): writes are refused until the new version is live; write again then")


def stream_chunks(conn: sqlite3.Connection, dims: int, batch_size: int) -> Iterator[list[EmbeddedChunk]]:
    """Every chunk of the database ``conn`` reads, in rowid order, in batches (the caller holds the read
    transaction that makes it one snapshot)."""
    batch: list[EmbeddedChunk] = []
    for r in conn.execute(_STREAM_SQL):
        chunk = Chunk(id=r[0], doc_id=r[1], source=r[2], title=r[3], chunk_index=int(r[4]),
                      chunk_count=int(r[5]), section=int(r[6]), start=int(r[7]), end=int(r[8]), doc_sha=r[9],
                      chunk_sha=r[10], metadata=sql.stored_metadata(r[11]), text=r[13], context=r[14])
        vector = np.frombuffer(r[12], dtype=np.float32).copy()
        if vector.shape[0] != dims:
            raise StoreError(f"chunk {r[0]} has a {vector.shape[0]}-dim vector, the index {dims}")
        batch.append(EmbeddedChunk(chunk, vector))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _checkpoint(path: Path, conn: sqlite3.Connection | None = None) -> None:
    """Move every committed page of ``path``'s WAL into the file itself (TRUNCATE checkpoint)."""
    own = conn is None
    c = conn or sqlite3.connect(path, timeout=sql.BUSY_TIMEOUT_S, isolation_level=None)
    try:
        for _ in range(100):
            busy, log, done = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy and log in (done, -1, 0):
                return
            time.sleep(0.1)
        raise StoreError(f"cannot checkpoint {path}: a reader holds an old snapshot for too long; try again")
    finally:
        if own:
            c.close()


def remove_files(path: Path) -> None:
    """Delete a database file, its -wal/-shm/-journal and the vector index files it named
    (``<file>.vectors-*``, esrag.stores.sqlite_vectors)."""
    for file in [*(Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")),
                 *path.parent.glob(f"{path.name}.vectors-*")]:
        with contextlib.suppress(FileNotFoundError):
            file.unlink()


def drop_versions(live: Path) -> None:
    """Delete every version file of the index at ``live`` and its freeze note (``esrag delete --all``)."""
    if live.parent.is_dir():
        for entry in live.parent.iterdir():
            if parse_version(live, entry.name) is not None:
                remove_files(entry)
    with contextlib.suppress(FileNotFoundError):
        note_file(live).unlink()


class SqliteVersions:
    """``IndexVersions`` over one SQLiteStore's index (see the module docstring)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.live = store.path
        self._frozen: sqlite3.Connection | None = None

    def _files(self) -> dict[int, tuple[Path, bool]]:
        out: dict[int, tuple[Path, bool]] = {}
        if self.live.parent.is_dir():
            for entry in self.live.parent.iterdir():
                parsed = parse_version(self.live, entry.name)
                if parsed is not None and (parsed[0] not in out or not parsed[1]):
                    out[parsed[0]] = (entry, parsed[1])
        return out

    def _legacy_number(self, files: dict[int, tuple[Path, bool]]) -> int | None:
        """The number of a live plain file (before the first reindex): 1, or the first free one."""
        if not self.live.is_file() or self.live.is_symlink():
            return None
        same = [n for n, (p, b) in files.items() if not b and file_token(p) == file_token(self.live)]
        if same:
            return same[0]
        return 1 if 1 not in files else max(files) + 1

    def listing(self) -> list[IndexVersion]:
        files = self._files()
        live_token = file_token(self.live)
        out = [IndexVersion(n, p.name, live=not b and file_token(p) == live_token,
                            state="building" if b else "complete") for n, (p, b) in files.items()]
        legacy = self._legacy_number(files)
        if legacy is not None and legacy not in files:
            out.append(IndexVersion(legacy, self.live.name, live=True))
        return sorted(out, key=lambda v: v.number)

    def token(self, fresh: bool = False) -> str | None:
        return file_token(self.live)

    def open(self, number: int, settings: Settings) -> SQLiteStore:
        from esrag.stores.sqlite import SQLiteStore

        path = version_file(self.live, number, building=True)
        return SQLiteStore(settings.replace(index=path.stem, sqlite_dir=str(self.live.parent)))

    @contextlib.contextmanager
    def freeze(self, purpose: str) -> Iterator[None]:
        note = read_note(self.live)
        if note is not None and holder_alive(note):
            raise ReindexInProgressError(
                f"the index at {self.live} is already being rebuilt (pid {note.get('pid')}, into "
                f"{note.get('target')}); wait for it, or stop it first")
        path = note_file(self.live)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "target": purpose,
                                   "since": int(time.time())}), encoding="utf-8")
        os.replace(tmp, path)
        try:
            conn = sqlite3.connect(self.live, timeout=sql.BUSY_TIMEOUT_S, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")  # a writer that passed check_writable finishes first
                self._frozen = conn
                yield
            finally:
                self._frozen = None
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def promote(self, number: int) -> None:
        final = version_file(self.live, number)
        building = version_file(self.live, number, building=True)
        if not final.exists():
            if not building.exists():
                raise ConfigError(f"no version {number} of the index at {self.live}")
            _checkpoint(building)
            os.replace(building, final)
            remove_files(building)
        files = self._files()
        legacy = self._legacy_number(files)
        if legacy is not None and legacy not in files:  # the first swap: name the plain file's version
            if self._frozen is not None and self._frozen.in_transaction:
                self._frozen.execute("COMMIT")  # writers stay refused by the note
            _checkpoint(self.live, self._frozen)
            os.link(self.live, version_file(self.live, legacy))
        tmp = self.live.with_name(f".{self.live.name}.{os.getpid()}.link")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(final.name, tmp)
        os.replace(tmp, self.live)

    def delete(self, number: int) -> None:
        files = self._files()
        if number not in files:
            return
        path, _ = files[number]
        if file_token(path) == file_token(self.live):
            raise ConfigError(f"{path.name} is the live version of the index at {self.live}: it cannot be "
                              f"deleted (roll back or reindex first)")
        remove_files(path)
        remove_files(version_file(self.live, number, building=True))

    def cleanup(self, force: bool = False) -> list[str]:
        note = read_note(self.live)
        if note is not None and holder_alive(note) and not force:
            raise ReindexInProgressError(f"the index at {self.live} is being rebuilt (pid {note.get('pid')}, "
                                         f"into {note.get('target')}); wait for it, or stop it first")
        done = []
        for entry in sorted(self.live.parent.iterdir()) if self.live.parent.is_dir() else []:
            parsed = parse_version(self.live, entry.name)
            if parsed is not None and parsed[1]:
                remove_files(entry)
                done.append(f"deleted the half-built version {entry.name} (version {parsed[0]})")
        if note is not None:
            note_file(self.live).unlink(missing_ok=True)
            done.append(f"removed the note of a reindex that died (pid {note.get('pid')})")
        return done


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` (through a link: the live version's); None when there is none."""
    st = path.stat() if path.exists() else None
    return (st.st_dev, st.st_ino) if st else None


@contextlib.contextmanager
def guard(path: Path, action: str) -> Iterator[None]:
    """Turn sqlite3 errors into StoreErrors that name the file."""
    try:
        yield
    except sqlite3.Error as e:
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise CorruptStoreError(
                f"{path} is not a valid esrag store ({e}); move it away, or delete it and run "
                f"`esrag ingest` again") from e
        if code == sqlite3.SQLITE_READONLY:
            raise StoreError(f"cannot {action} {path}: the file or its directory is read-only "
                             f"({e})") from e
        if code == sqlite3.SQLITE_CANTOPEN:
            raise StoreError(f"cannot {action} {path}: cannot open the file or create its -wal/-shm "
                             f"files; check that the directory exists and is writable ({e})") from e
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise StoreError(f"cannot {action} {path}: locked by another process for more than "
                             f"{sql.BUSY_TIMEOUT_S:.0f} s ({e})") from e
        raise StoreError(f"cannot {action} {path}: {e}") from e
