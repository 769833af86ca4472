"""Log lines that cannot be forged: control characters escaped in every message.

Anything a caller sends can reach a log line (a path, a document id, a header, an error message that quotes
a value). ``escape_control`` writes each C0 control (CR, LF, TAB...), DEL, each C1 control (NEL included),
the Unicode line and paragraph separators (U+2028, U+2029) and the bidirectional overrides and isolates
(U+202A-U+202E, U+2066-U+2069) as a visible escape (``\\n``, ``\\x1b``, ``\\u2028``), so a message is one
line and reads as what it is. ``EscapingFormatter`` applies it to every record: the message in full, and a
traceback line by line, each line indented, so no line of a traceback can pass for a record of its own.
It formats esrag's log handler (``stream_handler``): the CLI's lines and ``esrag serve``'s (uvicorn's own lines,
the API's access line and its error lines) all go through it.

Backslashes are left as they are: an escaped newline and a literal backslash-n read alike, but neither starts
a line.
"""

from __future__ import annotations

import logging
from typing import TextIO

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROL = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F),
            *range(0x2066, 0x206A)]
#: str.translate table: code point -> its escape
ESCAPES: dict[int, str] = {
    c: _NAMED.get(chr(c)) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROL
}
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: what starts each line of a traceback in a log record
TRACEBACK_INDENT = "    "


def escape_control(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1), line or paragraph separator and bidirectional
    control written as an escape; other characters (all printable Unicode) unchanged."""
    return text.translate(ESCAPES)


def escape_lines(text: str) -> str:
    """A multi-line text (a traceback) kept on its lines, each escaped and indented by ``TRACEBACK_INDENT``.
    Lines are split where Python splits them (``str.splitlines``: LF, CR, U+2028... all break)."""
    return "\n".join(TRACEBACK_INDENT + escape_control(line) for line in text.splitlines())


class EscapingFormatter(logging.Formatter):
    """A Formatter whose records are one line each, plus an indented traceback: see ``escape_control``."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_control(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802
        return escape_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return escape_lines(super().formatStack(stack_info))


def stream_handler(stream: TextIO) -> logging.Handler:
    """esrag's log handler (the CLI's and ``esrag serve``'s): ``LOG_FORMAT`` lines on ``stream``, escaped."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    return handler
