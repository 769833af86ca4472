"""Paths -> Documents: file discovery and loaders for txt, md, rst, html, pdf, json and jsonl.

Loading never raises for a bad file: whatever cannot be turned into a document (binary, unreadable,
vanished, too large, encrypted or broken PDF, bad or too deeply nested JSON, a name, id or metadata key
that is not valid Unicode, empty text) comes back as a ``Skipped`` with a one-line reason, so that an ingest
can report it and go on. A JSON/JSONL record holding a non-finite number anywhere (``NaN``, ``Infinity``,
``1e400``: Python's JSON parser reads them, no store can keep them) is skipped whole, naming the field; so is
a record whose ``id`` breaks the document id rule (``esrag.validation.doc_id_problem``). Only a path that
does not exist at all is an error (``LoaderError``).

Document ids (``doc_id``) are relative to the path given to ``discover_sources``, so the same corpus under
another checkout directory gets the same ids: a file named directly is ``<name>``; a file found under a
directory ``<dir>`` is ``<dir's name>/<path below it>``; both after an optional prefix. A JSON/JSONL
record is ``<file's id>#<record id>``, with the record's ``id`` (or ``_id``), else ``sha-`` and 16 hex
digits of the record's content, so inserting a record changes no other record's id.

A ``.txt``, ``.md`` or ``.rst`` file larger than ``STREAM_BYTES`` is read in a stream and loaded as
segments of about ``SEGMENT_CHARS`` characters, cut at paragraph ends chosen by their content (see
``esrag.sources.text_stream``), so memory does not grow with the file: each segment is a record
``<file's id>#part-`` and 16 hex digits of its text, so an edit changes only the ids of the segments it
touches. JSONL is read line by line; HTML, JSON and PDF files are read whole, within ``max_bytes``.

Text is decoded as UTF-8 (a BOM is dropped; a UTF-16 BOM switches to UTF-16); undecodable bytes become
U+FFFD and are counted in ``Document.decode_errors``. Line endings are normalised to ``\\n`` in text,
markdown, rst and html files.
"""

from __future__ import annotations

import codecs
import functools
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esrag.errors import LoaderError
from esrag.sources.text_formats import (
    html_document,
    html_to_text,
    markdown_outline,
    markdown_title,
    rst_outline,
    rst_title,
)
from esrag.sources.text_stream import SURROGATE, decode, decode_escaped, file_parts, normalize_newlines, replace_escaped
from esrag.types import Document, Heading, MetadataValue, canonical_json, sha256_hex
from esrag.validation import doc_id_problem, dotted, invalid_values

TEXT_EXTENSIONS = frozenset({".txt", ".md", ".rst", ".html", ".htm", ".json", ".jsonl"})
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS | {".pdf"}
#: Bytes looked at for a NUL byte, the sign of a binary file.
BINARY_SNIFF_BYTES = 8192
#: Record fields that are not copied into the metadata of JSON/JSONL documents.
RECORD_FIELDS = frozenset({"text", "id", "_id", "title", "metadata"})
#: Default largest file loaded (bytes); a JSONL file is limited per line instead.
MAX_FILE_BYTES = 100 * 1024 * 1024
#: Text files (``STREAM_EXTENSIONS``) larger than this many bytes are read in a stream, as segments.
STREAM_BYTES = 8 * 1024 * 1024
STREAM_EXTENSIONS = frozenset({".txt", ".md", ".rst"})
#: Characters a segment of a streamed file holds on average (at most twice as many; see esrag.sources.text_stream).
SEGMENT_CHARS = 1024 * 1024
#: Bytes per read of a streamed file.
READ_BYTES = 256 * 1024
__all__ = ["MAX_FILE_BYTES", "SUPPORTED_EXTENSIONS", "Notice", "Skipped", "SourceFile", "discover", "discover_sources",
           "display", "doc_id_candidates", "html_to_text", "iter_file", "load_file", "markdown_title", "rst_title"]


@dataclass(frozen=True)
class Skipped:
    """A file (or part of one) that produced no document. ``path`` is the resolved file path; ``reason``
    says why, prefixed with ``line N:`` (JSONL) or ``item N:`` (JSON list) for a single record."""

    path: str
    reason: str


@dataclass(frozen=True)
class Notice:
    """Something a user should know about a file that was loaded anyway (a record field overridden by
    ``--metadata``)."""

    path: str
    message: str


@dataclass(frozen=True)
class SourceFile:
    """A discovered file: its resolved ``path`` and its ``doc_id`` (see the module docstring)."""

    path: Path
    doc_id: str


def display(name: str) -> str:
    """A string printable as UTF-8: the bytes of a file name that are not valid UTF-8 (lone surrogates in
    a str from the file system) shown as ``\\xNN``, any other lone surrogate as ``\\udNNN``."""
    if not SURROGATE.search(name):
        return name
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def doc_id_candidates(path: str | Path) -> list[str]:
    """The doc ids a file may have been ingested under, most specific first: the path as typed, its
    resolved absolute path (ids of older versions), then every tail of it (``proj/docs/a.md``,
    ``docs/a.md``, ``a.md``). ``esrag delete --doc FILE`` takes the first that the index holds."""
    given = str(path)
    resolved = Path(path).expanduser().resolve()
    parts = resolved.parts[1:]
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    return list(dict.fromkeys([given, resolved.as_posix(), *tails]))


# ---------------------------------------------------------------------------------------------- discovery


def discover(
    paths: Sequence[str | Path],
    glob: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    follow_symlinks: bool = False,
) -> tuple[list[Path], list[Skipped]]:
    """The resolved paths of ``discover_sources`` (same arguments, same Skipped)."""
    found, skipped = discover_sources(paths, glob, exclude, include_hidden, follow_symlinks)
    return [f.path for f in found], skipped


def discover_sources(
    paths: Sequence[str | Path],
    glob: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    follow_symlinks: bool = False,
    prefix: str = "",
) -> tuple[list[SourceFile], list[Skipped]]:
    """The supported files under ``paths`` with their doc ids, in a deterministic order, and what was
    skipped (explicitly named files of unsupported types, unreadable directories, names that are not
    valid UTF-8, symlinks leading outside the given paths, doc ids taken by an earlier file).

    Directories are walked recursively in sorted order and, unless ``include_hidden``, without entering
    hidden directories (``.git``, ``.venv``, ``.esrag``) or taking hidden files. A symlink (to a file or a
    directory) found in a walk is followed only if its target lies under one of the given paths, or with
    ``follow_symlinks``; a directory already walked is never walked again, so symlink loops end. Files with
    unsupported extensions found in a walk are ignored; an explicitly named one is reported as Skipped.
    Files found twice are kept once. Raises LoaderError for a path that does not exist.

    Patterns apply to paths relative to the walked directory (to the path as given, for a named file):
    ``*`` and ``?`` stay within one path component and ``**`` spans any number. A pattern without ``/``
    matches a file name (``*.md``), one with ``/`` the whole relative path (``docs/**/*.md``). ``glob``
    patterns (any may match) select the files found in walks; ``exclude`` patterns remove files anywhere
    and, gitignore-like, also match directories, pruning everything below (``drafts``, ``build/``).
    """
    globs = [_Pattern(p) for p in glob]
    excludes = [_Pattern(p) for p in exclude]
    found: list[SourceFile] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()
    owners: dict[str, Path] = {}
    for given in paths:
        if not Path(given).expanduser().exists() and not Path(given).expanduser().is_symlink():
            raise LoaderError(f"no such file or directory: {display(str(given))}")
    roots = [Path(given).expanduser().resolve() for given in paths]

    def add(path: Path, doc_id: str) -> None:
        resolved = path.resolve()
        if resolved in seen:
            return
        seen.add(resolved)
        if SURROGATE.search(doc_id):
            skipped.append(Skipped(display(path.as_posix()), "file name is not valid UTF-8"))
        elif doc_id in owners:
            skipped.append(Skipped(resolved.as_posix(), f"doc id {doc_id!r} is already taken by "
                                                        f"{owners[doc_id].as_posix()}"))
        else:
            owners[doc_id] = resolved
            found.append(SourceFile(resolved, doc_id))

    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            base = prefix + (path.resolve().name + "/" if path.resolve().name else "")
            for file, rel in _walk(path, globs, excludes, include_hidden, follow_symlinks, roots, skipped):
                add(file, base + rel)
        elif not path.is_file():
            skipped.append(Skipped(display(path.absolute().as_posix()), "not a regular file"))
        elif _matches_any(path.as_posix().lstrip("/"), excludes, ancestors=True):
            continue
        elif path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            skipped.append(Skipped(display(path.resolve().as_posix()), _unsupported(path)))
        else:
            add(path, prefix + path.name)
    return found, skipped


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _walk(root: Path, globs: list[_Pattern], excludes: list[_Pattern], include_hidden: bool,
          follow_symlinks: bool, roots: Sequence[Path], skipped: list[Skipped]) -> Iterator[tuple[Path, str]]:
    """(file, path relative to ``root``) of the selected files under ``root``."""
    def on_error(e: OSError) -> None:
        where = Path(e.filename).absolute().as_posix() if e.filename else root.resolve().as_posix()
        skipped.append(Skipped(display(where), f"cannot read directory: {e.strerror or e}"))

    walked: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError as e:
            on_error(e)
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in walked:  # a symlink loop, or a directory reached twice
            dirnames[:] = []
            continue
        walked.add((st.st_dev, st.st_ino))
        rel_dir = here.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        keep = []
        for d in sorted(dirnames):
            if (not include_hidden and d.startswith(".")) or _matches_any(prefix + d, excludes, ancestors=True):
                continue
            if (here / d).is_symlink() and not _follow(here / d, follow_symlinks, roots, skipped):
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = prefix + name
            if name.startswith(".") and not include_hidden:
                continue
            if Path(name).suffix.lower() not in SUPPORTED_EXTENSIONS:
                continue
            if (globs and not _matches_any(rel, globs)) or _matches_any(rel, excludes, ancestors=True):
                continue
            file = here / name
            if file.is_symlink() and not _follow(file, follow_symlinks, roots, skipped):
                continue
            if file.is_file():  # not a FIFO, socket or broken symlink
                yield file, rel


def _follow(link: Path, follow_symlinks: bool, roots: Sequence[Path], skipped: list[Skipped]) -> bool:
    """Whether to follow a symlink met in a walk; one that leads outside the roots is reported."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # broken, or a loop
        return False
    if follow_symlinks or _inside(target, roots):
        return True
    skipped.append(Skipped(display(link.absolute().as_posix()),
                           f"symlink to {display(target.as_posix())}, outside the given paths "
                           "(--follow-symlinks follows it)"))
    return False


class _Pattern:
    """A gitignore-like pattern (see ``discover``) compiled to a regex."""

    def __init__(self, pattern: str) -> None:
        pattern = pattern.strip().removeprefix("./").strip("/")
        self.has_slash = "/" in pattern
        out: list[str] = []
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
                body = pattern[i + 1:close]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = close + 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        self.regex = re.compile("".join(out), re.DOTALL)

    def matches(self, rel: str, ancestors: bool = False) -> bool:
        """Whether the pattern matches the relative POSIX path ``rel`` (its last component, for a pattern
        without ``/``) or, with ``ancestors``, one of its parent directories."""
        parts = rel.split("/")
        if not ancestors:
            return bool(self.regex.fullmatch(rel if self.has_slash else parts[-1]))
        if not self.has_slash:
            return any(self.regex.fullmatch(part) for part in parts)
        return any(self.regex.fullmatch("/".join(parts[:k])) for k in range(1, len(parts) + 1))


def _matches_any(rel: str, patterns: list[_Pattern], ancestors: bool = False) -> bool:
    return any(p.matches(rel, ancestors) for p in patterns)


def _unsupported(path: Path) -> str:
    return f"unsupported file type '{path.suffix}'" if path.suffix else "unsupported file type (no extension)"


# ---------------------------------------------------------------------------------------------- loading


def load_file(path: str | Path, base_metadata: Mapping[str, MetadataValue] | None = None, doc_id: str | None = None,
              max_bytes: int | None = MAX_FILE_BYTES) -> tuple[list[Document], list[Skipped]]:
    """All documents of one file, and what was skipped (see ``iter_file``; notices are dropped)."""
    docs: list[Document] = []
    skipped: list[Skipped] = []
    for item in iter_file(path, base_metadata, doc_id, max_bytes):
        if isinstance(item, Skipped):
            skipped.append(item)
        elif isinstance(item, Document):
            docs.append(item)
    return docs, skipped


def iter_file(path: str | Path, base_metadata: Mapping[str, MetadataValue] | None = None, doc_id: str | None = None,
              max_bytes: int | None = MAX_FILE_BYTES) -> Iterator[Document | Skipped | Notice]:
    """Documents of one file, streamed (a JSONL corpus is read line by line), interleaved with Skipped
    and Notices.

    ``doc_id`` defaults to the resolved absolute POSIX path, which is always the ``source``; a JSON/JSONL
    record's doc id is ``<doc_id>#<record id>`` (see the module docstring). Metadata is ``base_metadata``
    plus ``ext`` plus, for records, their other scalar fields and the scalar fields of a ``metadata``
    object; where a record has a key of ``base_metadata`` (or ``ext``), the given value wins and a Notice
    says so, once per key and file. A file larger than ``max_bytes`` (a JSONL line, for JSONL) is skipped;
    a large text file comes as segments (see the module docstring), and if reading fails part way, the
    segments already yielded are followed by a Skipped. Never raises for the file's content, name or
    permissions, nor if it vanishes.
    """
    path = Path(path)
    name = path.absolute().as_posix()
    try:
        name = path.resolve().as_posix()
        yield from _iter_file(path, name, doc_id or name, base_metadata or {}, max_bytes)
    except OSError as e:
        yield Skipped(display(name), f"cannot read: {e.strerror or e}")
    except Exception as e:  # a loader bug or a library's surprise must not end an ingest
        yield Skipped(display(name), f"cannot load: {type(e).__name__}: {_one_line(e)}")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + "..." if len(text) > 200 else text


def _too_large(size: int, max_bytes: int) -> str:
    return f"larger than --max-file-size ({size:,} > {max_bytes:,} bytes)"


def _iter_file(path: Path, name: str, doc_id: str, base_metadata: Mapping[str, MetadataValue],
               max_bytes: int | None) -> Iterator[Document | Skipped | Notice]:
    ext = path.suffix.lower()
    if SURROGATE.search(name) or SURROGATE.search(doc_id):
        yield Skipped(display(name), "file name is not valid UTF-8")
        return
    if ext not in SUPPORTED_EXTENSIONS:
        yield Skipped(name, _unsupported(path))
        return
    base: dict[str, MetadataValue] = {**base_metadata, "ext": ext}
    if ext == ".jsonl":
        yield from _iter_jsonl(path, name, doc_id, base, max_bytes)
        return
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        yield Skipped(name, _too_large(size, max_bytes))
        return
    if ext == ".pdf":
        yield _load_pdf(path, name, doc_id, base)
        return
    if ext in STREAM_EXTENSIONS and size > STREAM_BYTES:
        yield from _iter_parts(path, name, doc_id, base)
        return
    data = path.read_bytes()
    if _is_binary(data):
        yield Skipped(name, "binary file")
    elif ext == ".json":
        yield from _iter_json(data, name, doc_id, base)
    else:
        text, errors = decode(data)
        del data
        text = normalize_newlines(text)
        title = ""
        outline: tuple[Heading, ...] = ()
        if ext in (".html", ".htm"):
            text, title, outline = html_document(text)
        elif ext == ".md":
            title, outline = markdown_title(text), markdown_outline(text)
        elif ext == ".rst":
            title, outline = rst_title(text), rst_outline(text)
        yield _document(doc_id, name, text, title or path.stem, base, errors, outline, title_is_name=not title)


def _iter_parts(path: Path, name: str, doc_id: str, base: dict[str, MetadataValue]) -> Iterator[Document | Skipped]:
    """A large text file as segment Documents (``esrag.sources.text_stream.file_parts``), read in a stream. A read
    error propagates (``iter_file`` turns it into a Skipped) after the segments read before it."""
    ext = path.suffix.lower()
    empty = True
    with path.open("rb") as f:
        head = f.read(BINARY_SNIFF_BYTES)
        if _is_binary(head):
            yield Skipped(name, "binary file")
            return
        reads = itertools.chain([head], iter(functools.partial(f.read, READ_BYTES), b""))
        for part in file_parts(reads, doc_id, ext[1:] if ext in (".md", ".rst") else "", SEGMENT_CHARS):
            empty = False
            yield Document(doc_id=part.doc_id, source=name, text=part.text, title=part.title or path.stem,
                           metadata=dict(base), decode_errors=part.decode_errors, outline=part.outline,
                           title_is_name=not part.title)
    if empty:
        yield Skipped(name, "empty document")


def _document(doc_id: str, source: str, text: str, title: str, metadata: dict[str, MetadataValue],
              errors: int, outline: tuple[Heading, ...] = (), title_is_name: bool = False) -> Document | Skipped:
    if not text.strip():
        return Skipped(source, "empty document")
    return Document(doc_id=doc_id, source=source, text=text, title=title, metadata=metadata,
                    decode_errors=errors, outline=outline, title_is_name=title_is_name)


def _is_binary(data: bytes) -> bool:
    return not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and (
        b"\x00" in data[:BINARY_SNIFF_BYTES])


# ---------------------------------------------------------------------------------------------- JSON


def _iter_json(data: bytes, name: str, doc_id: str, base: dict[str, MetadataValue]
               ) -> Iterator[Document | Skipped | Notice]:
    try:
        value = json.loads(decode_escaped(data))
    except RecursionError:
        yield Skipped(name, "invalid JSON: nested too deeply")
        return
    except ValueError as e:
        yield Skipped(name, f"invalid JSON: {e}")
        return
    records = _Records(name, doc_id, base)
    if isinstance(value, list):
        for index, record in enumerate(value):
            yield from records(record, f"item {index}", has_id_fallback=True)
    else:
        yield from records(value, "", has_id_fallback=False)


def _iter_jsonl(path: Path, name: str, doc_id: str, base: dict[str, MetadataValue], max_bytes: int | None,
                ) -> Iterator[Document | Skipped | Notice]:
    records = _Records(name, doc_id, base)
    limit = max_bytes if max_bytes is not None else -1
    with path.open("rb") as f:
        if _is_binary(f.read(BINARY_SNIFF_BYTES)):
            yield Skipped(name, "binary file")
            return
        f.seek(0)
        lineno = 0
        while raw := f.readline(limit + 1 if limit >= 0 else -1):
            lineno += 1
            if 0 <= limit < len(raw) and not raw.endswith(b"\n"):
                size = len(raw)
                while (rest := f.readline(1 << 20)) and (size := size + len(rest)) and not rest.endswith(b"\n"):
                    pass
                yield Skipped(name, f"line {lineno}: {_too_large(size, limit)}")
                continue
            line = raw.removeprefix(codecs.BOM_UTF8) if lineno == 1 else raw
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8", errors="surrogateescape"))
            except RecursionError:
                yield Skipped(name, f"line {lineno}: invalid JSON: nested too deeply")
                continue
            except ValueError as e:
                yield Skipped(name, f"line {lineno}: invalid JSON: {e}")
                continue
            yield from records(record, f"line {lineno}", has_id_fallback=True)


class _Records:
    """Turns the JSON records of one file into Documents: ids (given or from the content) unique within the
    file, metadata merged with the given metadata (which wins, with one Notice per key)."""

    def __init__(self, name: str, doc_id: str, base: dict[str, MetadataValue]) -> None:
        self.name, self.doc_id, self.base = name, doc_id, base
        self.first: dict[str, str] = {}
        self.noticed: set[str] = set()

    def __call__(self, record: Any, where: str, has_id_fallback: bool) -> Iterator[Document | Skipped | Notice]:
        prefix = f"{where}: " if where else ""
        try:
            item = self._record(record, prefix, has_id_fallback)
        except (RecursionError, ValueError, TypeError) as e:  # a value nested too deeply to hash, ...
            item = Skipped(self.name, f"{prefix}cannot read the record: {type(e).__name__}: {_one_line(e)}")
        if isinstance(item, tuple):
            item, clashes = item
            for key in sorted(clashes - self.noticed):
                self.noticed.add(key)
                yield Notice(self.name, f"records have a field {key!r} that the given metadata also sets; "
                                        f"the given value {self.base[key]!r} is used")
        if isinstance(item, Document):
            if item.doc_id in self.first:
                item = Skipped(self.name, f"{prefix}duplicate id (first at {self.first[item.doc_id]})")
            else:
                self.first[item.doc_id] = where or "the top level"
        yield item

    def _record(self, record: Any, prefix: str, has_id_fallback: bool
                ) -> Document | Skipped | tuple[Document, set[str]]:
        """One JSON object with a ``text`` string as a Document; undecodable bytes are counted here."""
        if not isinstance(record, dict):
            return Skipped(self.name, f"{prefix}not a JSON object")
        for path, problem in invalid_values(record, surrogates=False)[:1]:
            return Skipped(self.name, f"{prefix}field '{dotted(path)}' {problem}")
        text = record.get("text")
        if not isinstance(text, str):
            return Skipped(self.name, f"{prefix}no 'text' string field")
        record_id = record.get("id", record.get("_id"))
        if not isinstance(record_id, str | int) or isinstance(record_id, bool) or record_id == "":
            record_id = ("sha-" + sha256_hex(canonical_json(record))[:16]) if has_id_fallback else None
        elif SURROGATE.search(str(record_id)):
            return Skipped(self.name, f"{prefix}id is not valid Unicode (a lone surrogate)")
        elif (id_problem := doc_id_problem(str(record_id))) is not None:
            return Skipped(self.name, f"{prefix}id {str(record_id)!r} is not a valid document id: it {id_problem}")
        errors = 0
        text, n = replace_escaped(text)
        errors += n
        title = record.get("title")
        title, n = replace_escaped(title) if isinstance(title, str) else ("", 0)
        errors += n
        metadata = dict(self.base)
        clashes: set[str] = set()
        nested = record.get("metadata")
        fields = list(nested.items()) if isinstance(nested, dict) else []
        fields += [(key, value) for key, value in record.items() if key not in RECORD_FIELDS]
        for key, value in fields:
            key = str(key)
            if SURROGATE.search(key):
                return Skipped(self.name, f"{prefix}metadata key '{display(key)}' is not valid Unicode")
            if isinstance(value, str):
                value, n = replace_escaped(value)
                errors += n
            if isinstance(value, str | int | float | bool):
                if key in self.base:
                    if value != self.base[key]:
                        clashes.add(key)
                    continue
                metadata[key] = value
        doc_id = self.doc_id if record_id is None else f"{self.doc_id}#{record_id}"
        if not text.strip():
            return Skipped(self.name, f"{prefix}empty document")
        doc = Document(doc_id=doc_id, source=self.name, text=text, title=title.strip(), metadata=metadata,
                       decode_errors=errors)
        return (doc, clashes) if clashes else doc


# ---------------------------------------------------------------------------------------------- PDF


def _load_pdf(path: Path, name: str, doc_id: str, base: dict[str, MetadataValue]) -> Document | Skipped:
    from pypdf import PdfReader

    with path.open("rb") as f:
        try:
            reader = PdfReader(f)
            if reader.is_encrypted:
                try:
                    opened = bool(reader.decrypt(""))
                except Exception:  # missing AES backend, unsupported crypt filter...
                    opened = False
                if not opened:
                    return Skipped(name, "encrypted PDF (needs a password)")
            pages = [(page.extract_text() or "").strip() for page in reader.pages]
            info = reader.metadata
            title = str(info.title or "").strip() if info is not None else ""
        except OSError:
            raise
        except Exception as e:  # pypdf raises many error types for broken files
            return Skipped(name, f"cannot parse PDF: {type(e).__name__}: {e}")
    text = "\n\n".join(p for p in pages if p)
    return _document(doc_id, name, text, title or path.stem, base, 0, title_is_name=not title)
