"""Saving settings into ``esrag.toml`` without disturbing the rest of it.

``save_settings`` edits the file in place through ``tomlkit``, which keeps what a user wrote: other tables
(plugin sections, tools sharing the file), comments, key order and formatting. The file keeps its
permissions (a 0600 file holding a password stays 0600) and, when it is a symlink, the link: the target is
rewritten. The write is atomic: a temporary file in the same directory, flushed to disk, then renamed over
the old one, so an interrupted save leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from esrag.errors import ConfigError

#: The table esrag's own settings live in (a file without it, holding settings at the top level, is
#: edited at the top level, as ``config.read_toml`` reads it).
TABLE = "esrag"
#: Mode of a config file that did not exist: only its owner may read it (it may come to hold secrets).
NEW_FILE_MODE = 0o600


def save_settings(updates: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Set ``updates`` (setting name -> value; None removes the key) in the config file at ``path``,
    creating it (mode 0600) when missing, and return the path written.

    Where the settings go: the ``[esrag]`` table when the file has one; a new ``[esrag]`` table when the
    file has other tables; else (a new, empty or flat file) the top level. Everything else in the file is
    left as it was. Raises ConfigError naming the file when it cannot be parsed or written.
    """
    target = Path(path)
    if target.is_symlink():
        target = target.resolve()
    try:
        text = target.read_text(encoding="utf-8") if target.exists() else None
    except OSError as e:
        raise ConfigError(f"cannot read config file {target}: {e.strerror or e}") from e
    try:
        doc = tomlkit.parse(text) if text is not None else tomlkit.document()
    except TOMLKitError as e:
        raise ConfigError(f"cannot update config file {target}: it is not valid TOML ({e})") from e
    section = _section(doc)
    for key, value in updates.items():
        if value is None:
            section.pop(key, None)
        else:
            section[key] = value
    mode = stat.S_IMODE(target.stat().st_mode) if text is not None else NEW_FILE_MODE
    _atomic_write(target, tomlkit.dumps(doc), mode)
    return target


def _section(doc: tomlkit.TOMLDocument) -> Any:
    """The container esrag's settings are written to (see ``save_settings``)."""
    existing = doc.get(TABLE)
    if isinstance(existing, Table):
        return existing
    if existing is not None:
        raise ConfigError(f"'{TABLE}' in the config file is not a table")
    if any(isinstance(v, Table) for v in doc.values()):
        doc[TABLE] = tomlkit.table()  # top-level keys after other tables would land inside the last one
        return doc[TABLE]
    return doc


def _atomic_write(target: Path, text: str, mode: int) -> None:
    directory = target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ConfigError(f"cannot write config file {target}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write config file {target}: {e.strerror or e}") from e
