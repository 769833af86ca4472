"""Pure checks of what enters esrag from outside (HTTP bodies, data files, command-line values) and of what
a store gives back. No I/O.

- ``invalid_values``: every lone surrogate (not valid Unicode: UTF-8 cannot encode it) and every
  non-finite number (NaN, Infinity: not JSON, and a poison for SQLite's JSON functions) in a JSON-like
  value, keys included, at any depth, with the path to each.
- ``doc_id_problem``: the rule for a document id written through the API or given as data (a JSON/JSONL
  record's ``id``), so that every such id can be addressed over HTTP.
- ``filters_problem`` and the ``MAX_FILTER_*`` limits: the largest filter both stores take.
- ``clean_metadata``: a stored document's metadata as the flat map of finite scalars the API shows, whatever
  the stored document holds (a NaN written by an older version, nested objects written by another client).

The limits, and why:

- ``MAX_ID_CHARS`` (512): the API's bound on a document id (a path segment every proxy passes).
- ``MAX_FILTER_KEYS`` (64), ``MAX_FILTER_VALUES`` (256 per key) and ``MAX_FILTER_VALUES_TOTAL`` (1,024): the
  SQLite store compiles a filter into one SQL expression whose depth grows with keys and values; SQLite
  3.40 refuses depth over 1,000 (measured: 496 values of one key, 247 keys of one value, 370 values each
  for 64 keys), and each value is two SQL parameters (32,766 in SQLite's default build). Elasticsearch
  takes far more; the limits are the same on both stores so that a query that works on one works on the
  other.
- ``MAX_VALUE_CHARS`` (8,000): a metadata value, a filter value, a source or a title. Elasticsearch indexes
  each as one keyword term, and Lucene refuses a term over 32,766 UTF-8 bytes (a character is at most 4).
- ``INT64_MIN``/``INT64_MAX``: an integer metadata value must fit Elasticsearch's ``long`` (and the JSON
  encoder of its client).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from esrag.errors import ConfigError
from esrag.types import MetadataValue

MAX_ID_CHARS = 512
MAX_FILTER_KEYS = 64
MAX_FILTER_VALUES = 256
MAX_FILTER_VALUES_TOTAL = 1024
MAX_VALUE_CHARS = 8000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: at most this many problems are reported for one value (a body full of NaN needs no list of thousands)
MAX_REPORTED = 20

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

FieldPath = tuple[str | int, ...]


def printable(text: str) -> str:
    """``text`` safe to encode as UTF-8 and to show on one line: lone surrogates as ``\\udNNN``, control
    characters as ``\\xNN``."""
    if not (_SURROGATE.search(text) or _CONTROL.search(text)):
        return text
    out = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", out)


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate written as ``\\udNNN`` (so that it can be encoded as UTF-8)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(text) else text


def surrogate_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, and where), or None."""
    m = _SURROGATE.search(text)
    if m is None:
        return None
    return f"is not valid Unicode: a lone surrogate U+{ord(m.group()):04X} at character {m.start()}"


def _number_problem(value: float) -> str | None:
    if math.isfinite(value):
        return None
    return f"must be a finite number, not {value!r} (NaN and infinities are not JSON numbers)"


def invalid_values(value: Any, surrogates: bool = True, non_finite: bool = True) -> list[tuple[FieldPath, str]]:
    """(path, message) for each lone surrogate (in a string or a key) and each non-finite float in a
    JSON-like value (dicts, lists, scalars), depth first, at most ``MAX_REPORTED``. A path names keys
    ``printable``; a bad key is reported at its own path."""
    out: list[tuple[FieldPath, str]] = []
    for item in _walk(value, (), surrogates, non_finite):
        out.append(item)
        if len(out) >= MAX_REPORTED:
            break
    return out


def _walk(value: Any, path: FieldPath, surrogates: bool, non_finite: bool) -> Iterator[tuple[FieldPath, str]]:
    # an explicit stack, so a deeply nested value cannot exhaust Python's recursion limit; an entry with a
    # message is a bad key, reported in document order with the values around it
    stack: list[tuple[Any, FieldPath, str | None]] = [(value, path, None)]
    while stack:
        v, p, key_problem = stack.pop()
        if key_problem is not None:
            yield p, key_problem
        elif isinstance(v, str):
            if surrogates and (problem := surrogate_problem(v)):
                yield p, problem
        elif isinstance(v, float):
            if non_finite and (problem := _number_problem(v)):
                yield p, problem
        elif isinstance(v, Mapping):
            children: list[tuple[Any, FieldPath, str | None]] = []
            for k, child in v.items():
                where = (*p, printable(k) if isinstance(k, str) else str(k))
                if surrogates and isinstance(k, str) and (problem := surrogate_problem(k)):
                    children.append((None, where, f"the key {problem}"))
                else:
                    children.append((child, where, None))
            stack.extend(reversed(children))
        elif isinstance(v, list | tuple):
            stack.extend(reversed([(child, (*p, i), None) for i, child in enumerate(v)]))


def dotted(path: FieldPath) -> str:
    """A path as the API names a field: ``metadata.p99``, ``messages.0.content``."""
    return ".".join(str(p) for p in path)


def doc_id_problem(doc_id: str) -> str | None:
    """Why ``doc_id`` may not be written through the API or given as a record id, or None.

    An id is 1 to ``MAX_ID_CHARS`` characters of valid Unicode without control characters, and its
    ``/``-separated segments are neither empty nor ``.`` or ``..`` (so no leading, trailing or doubled
    ``/``): clients and proxies resolve dot segments and merge slashes in a URL path, and the id must reach
    the server as written in ``/v1/documents/{doc_id}``.
    """
    if not doc_id:
        return "must not be empty"
    if len(doc_id) > MAX_ID_CHARS:
        return f"is longer than {MAX_ID_CHARS} characters ({len(doc_id)})"
    if problem := surrogate_problem(doc_id):
        return problem
    if m := _CONTROL.search(doc_id):
        return f"has a control character U+{ord(m.group()):04X} at character {m.start()}"
    for segment in doc_id.split("/"):
        if segment in ("", ".", ".."):
            what = "an empty segment (a leading, trailing or doubled '/')" if not segment else f"a {segment!r} segment"
            return f"has {what}; ids are addressed as URL paths, which resolve these"
    return None


def filters_problem(filters: Mapping[str, Any]) -> str | None:
    """Why a filter (key -> value or values) is larger than the stores take (see the module docstring), or
    None."""
    if len(filters) > MAX_FILTER_KEYS:
        return f"has {len(filters)} keys; at most {MAX_FILTER_KEYS} are allowed"
    total = 0
    for key, values in filters.items():
        n = len(values) if isinstance(values, list | tuple) else 1
        if n > MAX_FILTER_VALUES:
            return f"'{printable(str(key))}' has {n} values; at most {MAX_FILTER_VALUES} per key are allowed"
        total += n
    if total > MAX_FILTER_VALUES_TOTAL:
        return f"has {total} values in all; at most {MAX_FILTER_VALUES_TOTAL} are allowed"
    return None


def check_filters(filters: Mapping[str, Any]) -> None:
    """ConfigError when a store cannot take ``filters``: over the limits (``filters_problem``), or a lone
    surrogate in a key or a value (neither store can encode it). The stores call this before building a
    query, so every caller (CLI, API, library) gets the same message."""
    if (problem := filters_problem(filters)) is not None:
        raise ConfigError(f"the filter {problem}")
    for key, values in filters.items():
        for text in (key, *([values] if isinstance(values, str) else values)):
            if (bad := surrogate_problem(str(text))) is not None:
                raise ConfigError(f"the filter '{printable(str(key))}': '{printable(str(text))}' {bad}")


def clean_metadata(raw: Any) -> dict[str, MetadataValue]:
    """A stored document's metadata as a flat map of finite scalars: nested objects flattened to dotted keys
    (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, as Elasticsearch's ``flattened`` type addresses them), and
    non-finite numbers, nulls, lists and anything else dropped. Anything but a mapping gives ``{}``."""
    out: dict[str, MetadataValue] = {}
    if not isinstance(raw, Mapping):
        return out
    stack: list[tuple[str, Any]] = [(valid_unicode(str(k)), v) for k, v in reversed(list(raw.items()))]
    while stack:
        key, value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((f"{key}.{valid_unicode(str(k))}", v) for k, v in reversed(list(value.items())))
        elif isinstance(value, bool | int):
            out[key] = value
        elif isinstance(value, float):
            if math.isfinite(value):
                out[key] = value
        elif isinstance(value, str):
            out[key] = valid_unicode(value)
    return out
