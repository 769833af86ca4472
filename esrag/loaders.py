"""Paths -> Documents: file discovery and loaders for txt, md, rst, html, pdf, json and jsonl.

Loading never raises for a bad file: whatever cannot be turned into a document (binary, unreadable,
encrypted or broken PDF, bad JSON line, empty text) comes back as a ``Skipped`` with the reason, so that an
ingest can report it and go on. Only a path that does not exist at all is an error (``LoaderError``).

Text is decoded as UTF-8 (a BOM is dropped; a UTF-16 BOM switches to UTF-16); undecodable bytes become
U+FFFD and are counted in ``Document.decode_errors``. Line endings are normalised to ``\\n`` in text,
markdown, rst and html files.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from esrag.errors import LoaderError
from esrag.types import Document, MetadataValue

TEXT_EXTENSIONS = frozenset({".txt", ".md", ".rst", ".html", ".htm", ".json", ".jsonl"})
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS | {".pdf"}
#: Bytes looked at for a NUL byte, the sign of a binary file.
BINARY_SNIFF_BYTES = 8192
#: Record fields that are not copied into the metadata of JSON/JSONL documents.
RECORD_FIELDS = frozenset({"text", "id", "_id", "title", "metadata"})


@dataclass(frozen=True)
class Skipped:
    """A file (or part of one) that produced no document. ``path`` is the resolved file path; ``reason``
    says why, prefixed with ``line N:`` (JSONL) or ``item N:`` (JSON list) for a single record."""

    path: str
    reason: str


# ---------------------------------------------------------------------------------------------- discovery


def discover(
    paths: Sequence[str | Path],
    glob: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
) -> tuple[list[Path], list[Skipped]]:
    """Resolved paths of the supported files under ``paths``, in a deterministic order, and what was
    skipped (explicitly named files of unsupported types, unreadable directories).

    Directories are walked recursively in sorted order, without following directory symlinks and, unless
    ``include_hidden``, without entering hidden directories (``.git``, ``.venv``, ``.esrag``) or taking
    hidden files. Files with unsupported extensions found in a walk are ignored; an explicitly named one is
    reported as Skipped. Files found twice are kept once. Raises LoaderError for a path that does not exist.

    Patterns apply to paths relative to the walked directory (to the path as given, for a named file):
    ``*`` and ``?`` stay within one path component and ``**`` spans any number. A pattern without ``/``
    matches a file name (``*.md``), one with ``/`` the whole relative path (``docs/**/*.md``). ``glob``
    patterns (any may match) select the files found in walks; ``exclude`` patterns remove files anywhere
    and, gitignore-like, also match directories, pruning everything below (``drafts``, ``build/``).
    """
    globs = [_Pattern(p) for p in glob]
    excludes = [_Pattern(p) for p in exclude]
    found: list[Path] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            found.append(resolved)

    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise LoaderError(f"no such file or directory: {given}")
        if path.is_dir():
            for file in _walk(path, globs, excludes, include_hidden, skipped):
                add(file)
        elif not path.is_file():
            skipped.append(Skipped(path.resolve().as_posix(), "not a regular file"))
        elif _matches_any(path.as_posix().lstrip("/"), excludes, ancestors=True):
            continue
        elif path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            skipped.append(Skipped(path.resolve().as_posix(), _unsupported(path)))
        else:
            add(path)
    return found, skipped


def _walk(root: Path, globs: list[_Pattern], excludes: list[_Pattern], include_hidden: bool,
          skipped: list[Skipped]) -> Iterator[Path]:
    def on_error(e: OSError) -> None:
        where = Path(e.filename).resolve().as_posix() if e.filename else root.resolve().as_posix()
        skipped.append(Skipped(where, f"cannot read directory: {e.strerror or e}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if (include_hidden or not d.startswith("."))
                             and not _matches_any(prefix + d, excludes, ancestors=True))
        for name in sorted(filenames):
            rel = prefix + name
            if name.startswith(".") and not include_hidden:
                continue
            if Path(name).suffix.lower() not in SUPPORTED_EXTENSIONS:
                continue
            if (globs and not _matches_any(rel, globs)) or _matches_any(rel, excludes, ancestors=True):
                continue
            if (Path(dirpath) / name).is_file():  # not a FIFO, socket or broken symlink
                yield Path(dirpath) / name


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


def load_file(path: str | Path, base_metadata: Mapping[str, MetadataValue] | None = None,
              ) -> tuple[list[Document], list[Skipped]]:
    """All documents of one file, and what was skipped (see ``iter_file``)."""
    docs: list[Document] = []
    skipped: list[Skipped] = []
    for item in iter_file(path, base_metadata):
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            docs.append(item)
    return docs, skipped


def iter_file(path: str | Path, base_metadata: Mapping[str, MetadataValue] | None = None,
              ) -> Iterator[Document | Skipped]:
    """Documents of one file, streamed (a JSONL corpus is read line by line), interleaved with Skipped.

    ``doc_id`` and ``source`` are the resolved absolute POSIX path; a JSON/JSONL record's ``doc_id`` is
    ``<path>#<id>`` with the record's ``id`` or ``_id`` (else its 1-based line number, or 0-based index in
    a JSON list). Metadata is ``base_metadata`` plus ``ext`` plus, for records, their other scalar fields
    and the scalar fields of a ``metadata`` object. Never raises for the file's content or permissions.
    """
    path = Path(path)
    name = path.resolve().as_posix()
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        yield Skipped(name, _unsupported(path))
        return
    base: dict[str, MetadataValue] = {**(base_metadata or {}), "ext": ext}
    try:
        if ext == ".pdf":
            yield _load_pdf(path, name, base)
        elif ext == ".jsonl":
            yield from _iter_jsonl(path, name, base)
        else:
            data = path.read_bytes()
            if _is_binary(data):
                yield Skipped(name, "binary file")
            elif ext == ".json":
                yield from _iter_json(data, name, base)
            else:
                text, errors = _decode(data)
                text = text.replace("\r\n", "\n").replace("\r", "\n")
                title = ""
                if ext in (".html", ".htm"):
                    text, title = html_to_text(text)
                elif ext == ".md":
                    title = markdown_title(text)
                elif ext == ".rst":
                    title = rst_title(text)
                yield _document(name, name, text, title or path.stem, base, errors)
    except OSError as e:
        yield Skipped(name, f"cannot read: {e.strerror or e}")


def _document(doc_id: str, source: str, text: str, title: str, metadata: dict[str, MetadataValue],
              errors: int) -> Document | Skipped:
    if not text.strip():
        return Skipped(source, "empty document")
    return Document(doc_id=doc_id, source=source, text=text, title=title, metadata=metadata,
                    decode_errors=errors)


def _is_binary(data: bytes) -> bool:
    return not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and (
        b"\x00" in data[:BINARY_SNIFF_BYTES])


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _decode(data: bytes) -> tuple[str, int]:
    """(text, number of undecodable bytes, each replaced by U+FFFD)."""
    return _replace_escaped(_decode_escaped(data))


def _escape_bad_bytes(e: UnicodeError) -> tuple[str, int]:
    """Decoding error handler: one lone surrogate per undecodable byte, like ``surrogateescape`` but for
    any codec (``surrogateescape`` refuses UTF-16 errors)."""
    if not isinstance(e, UnicodeDecodeError):
        raise e
    return "\udcff" * (e.end - e.start), e.end


codecs.register_error("esrag-escape", _escape_bad_bytes)


def _decode_escaped(data: bytes) -> str:
    """Text of UTF-8 (or, after a BOM, UTF-16) bytes; each bad byte becomes a lone surrogate."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="esrag-escape")
    return data.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")


def _replace_escaped(text: str) -> tuple[str, int]:
    """Replace the lone surrogates ``surrogateescape`` decoding leaves for bad bytes with U+FFFD."""
    return _ESCAPED_BYTE.subn("\ufffd", text)


# ---------------------------------------------------------------------------------------------- JSON


def _iter_json(data: bytes, name: str, base: dict[str, MetadataValue]) -> Iterator[Document | Skipped]:
    try:
        value = json.loads(_decode_escaped(data))
    except ValueError as e:
        yield Skipped(name, f"invalid JSON: {e}")
        return
    if isinstance(value, list):
        unique = _Unique(name)
        for index, record in enumerate(value):
            yield unique(_record(record, name, str(index), f"item {index}: ", base), f"item {index}")
    else:
        yield _record(value, name, None, "", base)


class _Unique:
    """Turns a record whose doc_id was already seen in the file into a Skipped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.first: dict[str, str] = {}

    def __call__(self, item: Document | Skipped, where: str) -> Document | Skipped:
        if isinstance(item, Skipped):
            return item
        if item.doc_id in self.first:
            return Skipped(self.name, f"{where}: duplicate id (first at {self.first[item.doc_id]})")
        self.first[item.doc_id] = where
        return item


def _iter_jsonl(path: Path, name: str, base: dict[str, MetadataValue]) -> Iterator[Document | Skipped]:
    unique = _Unique(name)
    with path.open("rb") as f:
        if _is_binary(f.read(BINARY_SNIFF_BYTES)):
            yield Skipped(name, "binary file")
            return
        f.seek(0)
        for lineno, raw in enumerate(f, start=1):
            line = raw.removeprefix(codecs.BOM_UTF8) if lineno == 1 else raw
            if not line.strip():
                continue
            where = f"line {lineno}: "
            try:
                record = json.loads(line.decode("utf-8", errors="surrogateescape"))
            except ValueError as e:
                yield Skipped(name, f"{where}invalid JSON: {e}")
                continue
            yield unique(_record(record, name, str(lineno), where, base), f"line {lineno}")


def _record(record: Any, name: str, fallback_id: str | None, where: str,
            base: dict[str, MetadataValue]) -> Document | Skipped:
    """One JSON object with a ``text`` string as a Document; undecodable bytes are counted here."""
    if not isinstance(record, dict):
        return Skipped(name, f"{where}not a JSON object")
    text = record.get("text")
    if not isinstance(text, str):
        return Skipped(name, f"{where}no 'text' string field")
    record_id = record.get("id", record.get("_id"))
    if not isinstance(record_id, str | int) or isinstance(record_id, bool) or record_id == "":
        record_id = fallback_id
    errors = 0
    text, n = _replace_escaped(text)
    errors += n
    title = record.get("title")
    title, n = _replace_escaped(title) if isinstance(title, str) else ("", 0)
    errors += n
    metadata = dict(base)
    nested = record.get("metadata")
    fields = list(nested.items()) if isinstance(nested, dict) else []
    fields += [(key, value) for key, value in record.items() if key not in RECORD_FIELDS]
    for key, value in fields:
        if isinstance(value, str):
            value, n = _replace_escaped(value)
            errors += n
        if isinstance(value, str | int | float | bool):
            metadata[str(key)] = value
    doc_id = name if record_id is None else f"{name}#{record_id}"
    if not text.strip():
        return Skipped(name, f"{where}empty document")
    return Document(doc_id=doc_id, source=name, text=text, title=title.strip(), metadata=metadata,
                    decode_errors=errors)


# ---------------------------------------------------------------------------------------------- PDF


def _load_pdf(path: Path, name: str, base: dict[str, MetadataValue]) -> Document | Skipped:
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
    return _document(name, name, text, title or path.stem, base, 0)


# ---------------------------------------------------------------------------------------------- titles


_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_FRONT_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$")


def markdown_title(text: str) -> str:
    """The first level-1 heading (``# Title`` or a line underlined with ``===``) outside code fences, or a
    ``title:`` in YAML front matter; "" if none."""
    lines = text.split("\n")
    start = 0
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() in ("---", "..."):
                start = i + 1
                for line in lines[1:i]:
                    if m := _FRONT_TITLE.match(line):
                        return m.group(1).strip("\"'")
                break
    in_fence = False
    for i in range(start, len(lines)):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
        elif in_fence:
            continue
        elif m := _ATX_H1.match(line):
            return m.group(1).strip()
        elif (line.strip() and i + 1 < len(lines) and _SETEXT_H1.match(lines[i + 1])
              and not line.startswith("    ")):
            return line.strip()
    return ""


_RST_ADORNMENT = re.compile(r"""^([=\-~^"'`*+#:.!_<>])\1*$""")


def rst_title(text: str) -> str:
    """The first section title: a line followed by an adornment line (``====``, ``----``...) at least as
    long as it; "" if none."""
    lines = text.split("\n")
    for i in range(len(lines) - 1):
        title, underline = lines[i].strip(), lines[i + 1].rstrip()
        if (title and not _RST_ADORNMENT.match(title) and _RST_ADORNMENT.match(underline)
                and len(underline) >= len(title)):
            return title
    return ""


# ---------------------------------------------------------------------------------------------- HTML


_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg"})
_BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "h1", "h2", "h3", "h4",
    "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre", "figure", "figcaption", "form",
    "fieldset", "address", "details", "summary", "hr", "body",
})
_LINE_TAGS = frozenset({"br", "li", "tr", "dt", "dd", "caption", "option"})
_CELL_TAGS = frozenset({"td", "th"})
_SPACES = re.compile(r"\s+")
_STRENGTH = {"": 0, " ": 1, "\n": 2, "\n\n": 3}


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page: blocks separated by blank lines, list items and rows by newlines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self.h1 = ""
        self._skip = 0
        self._pre = 0
        self._in_title = False
        self._h1_depth = 0
        self._break = ""  # pending separator: "", " ", "\n" or "\n\n"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag == "title" and not self._skip and not self.title:
            self._in_title = True
        elif tag == "h1" and not self.h1:
            self._h1_depth += 1
        if tag == "pre":
            self._pre += 1
        self._separate(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._separate(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag == "h1" and self._h1_depth:
            self._h1_depth -= 1
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        self._separate(tag)

    def _separate(self, tag: str) -> None:
        self._want("\n\n" if tag in _BLOCK_TAGS else "\n" if tag in _LINE_TAGS else " " if tag in _CELL_TAGS
                   else "")

    def _want(self, separator: str) -> None:
        """Ask for a separator before the next text; the strongest asked for wins."""
        if _STRENGTH[separator] > _STRENGTH[self._break]:
            self._break = separator

    def _append(self, text: str) -> None:
        if self._break and self.parts:
            self.parts.append(self._break)
        self._break = ""
        self.parts.append(text)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = _SPACES.sub(" ", self.title + data)
            return
        if self._skip:
            return
        if self._h1_depth:
            self.h1 = _SPACES.sub(" ", self.h1 + data)
        if self._pre:
            self._append(data)
            return
        text = _SPACES.sub(" ", data)
        if text.startswith(" "):
            self._want(" ")
        if text.strip(" "):
            self._append(text.strip(" "))
        if text.endswith(" "):
            self._want(" ")


def html_to_text(html: str) -> tuple[str, str]:
    """(visible text, title) of an HTML page; the title is ``<title>``, else the first ``<h1>``, else ""."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = re.sub(r"[ \t]+\n", "\n", "".join(parser.parts))
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text, (parser.title.strip() or parser.h1.strip())
