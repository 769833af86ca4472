"""Large text files are read in a stream as segment documents that together are the whole file, with its
title, metadata and heading paths; smaller files, HTML and the usual skips are as before (esrag/sources/loaders.py
with esrag/sources/text_stream.py). The size thresholds are lowered so that the files stay small."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from esrag.ingest.context import sections
from esrag.sources import loaders
from esrag.sources.loaders import Skipped, iter_file, load_file
from esrag.types import Document


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loaders, "STREAM_BYTES", 2000)
    monkeypatch.setattr(loaders, "SEGMENT_CHARS", 256)
    monkeypatch.setattr(loaders, "READ_BYTES", 100)


def markdown_bytes(seed: int = 1, sections_: int = 40) -> bytes:
    """A Markdown file with CRLF line ends, headings at three levels, code fences holding blank lines and
    '# comments', accents and a few invalid bytes."""
    rng = random.Random(seed)
    words = "river stone lamp orbit maple signal copper garden window thunder café naïve".split()
    out = ["# The Handbook\r\n\r\n"]
    for i in range(sections_):
        out.append(f"{'#' * rng.randint(2, 3)} Section {i}\r\n\r\n")
        for _ in range(rng.randint(1, 4)):
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) + ".\r\n\r\n")
        if i % 7 == 3:
            out.append("```\r\n# a comment, not a heading\r\n\r\nls -l\r\n\r\n# another\r\n```\r\n\r\n")
    data = "".join(out).encode()
    return data[:900] + b"\xff\xfe bad" + data[900:]


def path_at(doc: Document, pos: int) -> tuple[str, ...]:
    return next(path for start, end, path in sections(doc, doc.title) if start <= pos < end)


def test_a_large_markdown_file_streams_as_segments_that_are_the_whole_file(
        tmp_path: Path, small_limits: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "handbook.md"
    path.write_bytes(markdown_bytes())
    parts, skipped = load_file(path, {"team": "docs"}, doc_id="kb/handbook.md")
    monkeypatch.setattr(loaders, "STREAM_BYTES", 10**9)
    (whole,), _ = load_file(path, {"team": "docs"}, doc_id="kb/handbook.md")
    assert skipped == [] and len(parts) > 10
    assert "".join(p.text for p in parts) == whole.text
    assert sum(p.decode_errors for p in parts) == whole.decode_errors == 2
    assert all(re.fullmatch(r"kb/handbook\.md#part-[0-9a-f]{16}", p.doc_id) for p in parts)
    assert len({p.doc_id for p in parts}) == len(parts)
    assert {(p.title, p.title_is_name, p.source) for p in parts} == {("The Handbook", False, whole.source)}
    assert all(p.metadata == {"team": "docs", "ext": ".md"} == whole.metadata for p in parts)
    # every position has the heading path it has in the whole file, code fences included
    offset = 0
    for p in parts:
        for start, _, path_ in sections(p, p.title):
            assert path_ == path_at(whole, offset + start)
        offset += len(p.text)


def test_segments_do_not_depend_on_the_read_size(tmp_path: Path, small_limits: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(markdown_bytes(seed=2))
    small_reads, _ = load_file(path)
    monkeypatch.setattr(loaders, "READ_BYTES", 1 << 20)
    assert load_file(path)[0] == small_reads
    assert all(p.title == "notes" and p.title_is_name and p.outline == () for p in small_reads)


def test_files_up_to_the_threshold_and_html_load_whole(tmp_path: Path, small_limits: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = markdown_bytes()
    path = tmp_path / "a.md"
    path.write_bytes(data)
    monkeypatch.setattr(loaders, "STREAM_BYTES", len(data))
    (doc,), _ = load_file(path, doc_id="a.md")
    assert doc.doc_id == "a.md" and doc.title == "The Handbook"
    html = tmp_path / "page.html"
    html.write_text("<title>Page</title>" + "<p>words and more words</p>" * 200)
    (page,), _ = load_file(html, doc_id="page.html")
    assert page.doc_id == "page.html" and page.title == "Page"


def test_a_large_binary_blank_or_too_large_file_is_skipped_as_before(tmp_path: Path, small_limits: None) -> None:
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"\x00\x01" * 5000)
    blank = tmp_path / "blank.md"
    blank.write_text(" \n\n\t\n" * 1000)
    huge = tmp_path / "huge.rst"
    huge.write_text("word " * 1000)
    assert load_file(binary) == ([], [Skipped(binary.resolve().as_posix(), "binary file")])
    assert load_file(blank) == ([], [Skipped(blank.resolve().as_posix(), "empty document")])
    assert load_file(huge, max_bytes=4000) == ([], [Skipped(
        huge.resolve().as_posix(), "larger than --max-file-size (5,000 > 4,000 bytes)")])


def test_a_read_error_part_way_keeps_the_segments_read_and_ends_with_a_skip(tmp_path: Path,
                                                                            small_limits: None) -> None:
    path = tmp_path / "big.md"
    path.write_bytes(markdown_bytes(sections_=400))  # far larger than the reader's buffer
    items = iter_file(path, doc_id="big.md")
    first = next(items)
    assert isinstance(first, Document)
    fd = next(int(fd) for fd in os.listdir("/proc/self/fd")
              if os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve()))
    directory = os.open(tmp_path, os.O_RDONLY)
    os.dup2(directory, fd)  # the next read of the open file fails, as a disk error would
    os.close(directory)
    rest = list(items)
    assert rest and all(isinstance(i, Document) for i in rest[:-1])
    assert rest[-1] == Skipped(path.resolve().as_posix(), "cannot read: Is a directory")
    read = [first, *rest[:-1]]
    everything, _ = load_file(path, doc_id="big.md")
    assert read == everything[:len(read)] and len(read) < len(everything) / 2
