"""Elasticsearch records to Documents: pure rules, no I/O.

A record (its ``_source``) becomes one Document:

- **id**: ``es:<index>/<record id>``, the record id being ``_id`` or the value of ``--id-field`` (a string
  or an integer). The ``es:<index>/`` prefix keeps the records of each source index apart from files and
  from other indices in one esrag index, and is the prune scope of the source.
- **text**: the ``--text-field`` values. One field: its value. Several: each under a ``# <field>``
  heading (in the outline), so the chunker and the embed template see each field as a section. A record
  with some of the fields gets the ones it has; a record with none (or only empty ones) is skipped.
- **values**: a string is itself; a number or a boolean its JSON text; a list of strings and numbers is
  joined (text fields: one per line; title and metadata: ``", "``); ``null`` and ``[]`` count as missing.
  An object (or a list holding one) is refused with the field's path: name a field inside it.
- **title**: the ``--title-field`` value ("" when missing).
- **metadata**: each ``--metadata-field`` under its own path as the key (``brand``, ``specs.color``), so
  ``search --filter specs.color=red`` works; plus ``source_index`` (the concrete index that holds the
  record) and ``source_id`` (its ``_id``), so a hit points back to the record.
- **source**: ``<index>/_doc/<_id>``, the record's own address (``GET <index>/_doc/<_id>``).

Field paths are dotted: ``specs.color`` reads ``{"specs": {"color": ...}}`` or a key ``"specs.color"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esrag.sources.loaders import Skipped
from esrag.types import Document, Heading, MetadataValue, canonical_json, sha256_hex
from esrag.validation import doc_id_problem, printable

#: metadata keys the source sets on every chunk (a --metadata-field may not use them)
RESERVED_METADATA = ("source_index", "source_id")
ID_PREFIX = "es:"


class FieldProblem(ValueError):
    """A field holds a value that cannot be text (an object); the message names its path."""


@dataclass(frozen=True)
class RecordFields:
    """Which fields of a record make the document (see the module docstring)."""

    text_fields: tuple[str, ...]
    title_field: str | None = None
    metadata_fields: tuple[str, ...] = ()
    id_field: str = "_id"

    @property
    def signature(self) -> str:
        """A hash of the field choices: part of every record's version, so that changing them re-reads
        every record (its content changes though its record does not)."""
        return sha256_hex(canonical_json([list(self.text_fields), self.title_field, list(self.metadata_fields),
                                          self.id_field]))[:12]

    @property
    def source_fields(self) -> list[str]:
        """The ``_source`` fields a full read needs."""
        wanted = [*self.text_fields, *([self.title_field] if self.title_field else []), *self.metadata_fields]
        if self.id_field != "_id":
            wanted.append(self.id_field)
        return list(dict.fromkeys(wanted))


def scope(index: str) -> str:
    """The doc-id prefix of the records of source ``index``: ``es:<index>/``."""
    return f"{ID_PREFIX}{index}/"


def doc_id(index: str, record_id: str) -> str:
    return scope(index) + record_id


def field_value(source: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` of a record's ``_source`` (None when absent): a key holding the whole
    path wins, then nested objects (``{"a": {"b": 1}}`` and ``{"a.b": 1}`` both give ``a.b``); through a
    list of objects, the values of each, flattened."""
    if path in source:
        return source[path]
    parts = path.split(".")
    for i in range(1, len(parts)):
        node = source.get(".".join(parts[:i]))
        rest = ".".join(parts[i:])
        if isinstance(node, Mapping):
            value = field_value(node, rest)
            if value is not None:
                return value
        elif isinstance(node, list):
            found = [field_value(item, rest) for item in node if isinstance(item, Mapping)]
            values = [v for f in found for v in (f if isinstance(f, list) else [f]) if v is not None]
            if values:
                return values
    return None


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value == int(value) else repr(value)
    if isinstance(value, str):
        return value
    return None


def as_text(value: Any, path: str, joiner: str = "\n") -> str | None:
    """``value`` as text (see the module docstring); None when missing. Raises FieldProblem naming
    ``path`` for an object."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        raise FieldProblem(f"field {path!r} holds an object, not text; name a field inside it ({path}.<field>)")
    if isinstance(value, list):
        parts: list[str] = []
        for item in value:
            if isinstance(item, Mapping | list):
                raise FieldProblem(f"field {path!r} holds a list with an object, not text; name a field inside it "
                                   f"({path}.<field>)")
            text = _scalar(item)
            if text is not None and text.strip():
                parts.append(text)
        return joiner.join(parts) if parts else None
    return _scalar(value)


def metadata_value(value: Any, path: str) -> MetadataValue | None:
    """A metadata field's value: scalars as they are (a float that is not finite: missing), lists joined
    with ", "; None when missing. Raises FieldProblem for an object."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return as_text(value, path, ", ")


def record_id(hit: Mapping[str, Any], id_field: str) -> str:
    """The record id of a search hit or mget doc: ``_id``, or the ``id_field`` value (a string or an
    integer). Raises FieldProblem when the field is missing or holds anything else."""
    if id_field == "_id":
        return str(hit["_id"])
    value = field_value(hit.get("_source") or {}, id_field)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        what = "is missing" if value in (None, "") else f"holds {type(value).__name__} {printable(str(value))[:40]!r}"
        raise FieldProblem(f"id field {id_field!r} {what}; it must hold a string or an integer")
    return str(value)


def checked_doc_id(index: str, rid: str) -> str:
    """``es:<index>/<rid>``, or FieldProblem when it cannot be a doc id (too long, a control character)."""
    out = doc_id(index, rid)
    problem = doc_id_problem(out)
    if problem is not None and "segment" not in problem:  # an id with '//' or '..' is kept: it is the record's
        raise FieldProblem(f"record id {printable(rid)[:80]!r} cannot be a document id: it {problem}")
    return out


def version(fields: RecordFields, hit: Mapping[str, Any]) -> str:
    """The record's version token: the field choices, its concrete index, primary term and sequence number
    (they change with every write of the record); "" when the server returned no sequence number."""
    seq, term = hit.get("_seq_no"), hit.get("_primary_term")
    if seq is None or term is None:
        return ""
    return f"{fields.signature}:{hit.get('_index', '')}:{term}:{seq}"


def record_document(index: str, hit: Mapping[str, Any], fields: RecordFields) -> Document | Skipped:
    """The Document of one record (an mget doc or a search hit with ``_source``), or Skipped with a reason
    naming the record and the field (see the module docstring). ``index`` is the source index as given."""
    concrete, es_id = str(hit.get("_index", index)), str(hit["_id"])
    where = f"{concrete}/_doc/{es_id}"
    source: Mapping[str, Any] = hit.get("_source") or {}
    try:
        rid = record_id(hit, fields.id_field)
        texts = [(f, as_text(field_value(source, f), f)) for f in fields.text_fields]
        title = None
        if fields.title_field:
            title = as_text(field_value(source, fields.title_field), fields.title_field, ", ")
        metadata: dict[str, MetadataValue] = {}
        for f in fields.metadata_fields:
            value = metadata_value(field_value(source, f), f)
            if value is not None:
                metadata[f] = value
        did = checked_doc_id(index, rid)
    except FieldProblem as e:
        return Skipped(where, str(e))
    present = [(f, t) for f, t in texts if t is not None and t.strip()]
    if not present:
        names = ", ".join(repr(f) for f in fields.text_fields)
        return Skipped(where, f"no text: the text field{'s' if len(fields.text_fields) > 1 else ''} {names} "
                              f"{'are' if len(fields.text_fields) > 1 else 'is'} missing or empty")
    text, outline = join_sections(present) if len(fields.text_fields) > 1 else (present[0][1], ())
    metadata.update(source_index=concrete, source_id=es_id)
    return Document(doc_id=did, source=where, text=text, title=title or "", metadata=metadata, outline=outline,
                    version=version(fields, hit))


def join_sections(sections: Sequence[tuple[str, str]]) -> tuple[str, tuple[Heading, ...]]:
    """``# <field>`` then the field's text, for each; the headings as the outline (offsets into the text)."""
    parts: list[str] = []
    outline: list[Heading] = []
    offset = 0
    for name, text in sections:
        head = f"# {name}\n\n"
        outline.append(Heading(offset, 1, name))
        parts.append(head + text.strip())
        offset += len(parts[-1]) + 2
    return "\n\n".join(parts), tuple(outline)
