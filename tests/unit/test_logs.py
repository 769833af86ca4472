"""Log lines cannot be forged: every control character a caller could send is escaped, and a traceback's
lines are indented, so each record starts exactly one unindented line."""

from __future__ import annotations

import io
import logging

from esrag.logs import TRACEBACK_INDENT, EscapingFormatter, escape_control, stream_handler


def test_every_control_character_and_line_separator_is_escaped() -> None:
    assert escape_control("/nothing\nERROR esrag.api: forged") == "/nothing\\nERROR esrag.api: forged"
    assert escape_control("a\rb\tc\x00d\x1be\x7ff\x85g\x9fh\u2028i\u2029j\u202ek\u2066l") == (
        "a\\rb\\tc\\x00d\\x1be\\x7ff\\x85g\\x9fh\\u2028i\\u2029j\\u202ek\\u2066l")
    for c in map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]):
        out = escape_control(f"x{c}y")
        assert c not in out and out.isprintable() and len(out.splitlines()) == 1, repr(c)
    kept = "plain ascii, café, 日本語, emoji 🙂, a\\nliteral backslash-n"
    assert escape_control(kept) == kept


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    ei = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("esrag.api", logging.INFO, __file__, 1, msg, args, ei)


def test_a_record_is_one_line_and_its_traceback_is_indented() -> None:
    fmt = EscapingFormatter("%(levelname)s %(name)s: %(message)s")
    line = fmt.format(_record("%s GET %s 404", "rid", "/x\nERROR esrag.api: forged\u2028WARNING y"))
    assert line == "INFO esrag.api: rid GET /x\\nERROR esrag.api: forged\\u2028WARNING y 404"
    try:
        raise ValueError("boom\nERROR esrag.api: forged")
    except ValueError as e:
        text = fmt.format(_record("request %s: unexpected %s", "rid", "ValueError", exc=e))
    first, *rest = text.split("\n")
    assert first == "INFO esrag.api: request rid: unexpected ValueError"
    assert rest and all(r.startswith(TRACEBACK_INDENT) for r in rest)
    assert any(r == f"{TRACEBACK_INDENT}ERROR esrag.api: forged" for r in rest)  # indented: not a record


def test_the_handler_writes_escaped_lines_from_any_logger() -> None:
    out = io.StringIO()
    logger = logging.getLogger("esrag.test_logs")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(stream_handler(out))
    try:
        logger.warning("keeping the old chunks of %s", "doc\r\nINFO esrag: forged")
    finally:
        logger.handlers.clear()
    assert out.getvalue() == "WARNING esrag.test_logs: keeping the old chunks of doc\\r\\nINFO esrag: forged\n"
