"""Streamed decoding equals whole-file decoding, and segments cover the text exactly, are bounded, do not
depend on read sizes and are content-defined (esrag/sources/text_stream.py)."""

from __future__ import annotations

import codecs
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esrag.sources.text_stream import (
    Segmenter,
    StreamDecoder,
    decode,
    normalize_newlines,
    part_id,
    part_owner,
    replace_escaped,
    segments,
)
from esrag.types import sha256_hex

BOMS = (b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
UTF8_TOKENS = [b"a", b"word ", b"\r", b"\n", b"\r\n", b"\n\n", b"  \n", "é".encode(), "€".encode(),
               "𝄞".encode(), b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", codecs.BOM_UTF8, "\ufffd".encode()]
UTF16_TOKENS = [*("a\r\n é€𝄞\n\r".encode("utf-16-le")[i:i + 2] for i in range(0, 20, 2)), b"\x00\xd8", b"\x00",
                b"\xff"]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def stream_decode(pieces: list[bytes]) -> str:
    decoder = StreamDecoder()
    return "".join(decoder.feed(p) for p in pieces) + decoder.feed(b"", final=True)


encoded = st.one_of(
    st.tuples(st.sampled_from(BOMS), st.binary(max_size=64)).map(lambda t: t[0] + t[1]),
    st.lists(st.sampled_from(UTF8_TOKENS), max_size=40).map(b"".join),
    st.lists(st.sampled_from(UTF16_TOKENS), max_size=40).map(lambda t: codecs.BOM_UTF16_LE + b"".join(t)),
)


@given(encoded, st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_streamed_decoding_equals_whole_decoding_however_the_bytes_are_split(data: bytes, cuts: list[int]) -> None:
    text, errors = decode(data)
    assert replace_escaped(stream_decode(split(data, cuts))) == (normalize_newlines(text), errors)


def test_a_carriage_return_at_the_end_of_a_read_still_pairs_with_the_next_newline() -> None:
    assert stream_decode([b"one\r", b"\ntwo\r", b"", b"\r\nthree\r"]) == "one\ntwo\n\nthree\n"


@settings(max_examples=60)
@given(encoded, st.lists(st.integers(min_value=0, max_value=200), max_size=12),
       st.integers(min_value=8, max_value=24))
def test_segments_join_to_the_whole_text_with_its_error_count_whatever_the_reads(
        data: bytes, cuts: list[int], target: int) -> None:
    text, errors = decode(data)
    whole = list(segments([data], target))
    assert "".join(s for s, _ in whole) == normalize_newlines(text)
    assert sum(n for _, n in whole) == errors
    assert list(segments(split(data, cuts), target)) == whole


def prose(rng: random.Random, paragraphs: int) -> str:
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    out = []
    for _ in range(paragraphs):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(rng.randint(1, 8))]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def cut(text: str, target: int, read: int = 4096) -> list[str]:
    data = text.encode()
    return [s for s, _ in segments((data[i:i + read] for i in range(0, len(data), read)), target)]


def test_prose_segments_are_bounded_average_the_target_and_start_on_a_paragraph() -> None:
    text = prose(random.Random(7), 4000)
    target = 4000
    parts = cut(text, target)
    assert "".join(parts) == text
    assert all(target // 2 <= len(p) <= 2 * target for p in parts[:-1]) and len(parts[-1]) <= 2 * target
    assert 0.8 * target <= len(text) / len(parts) <= 1.2 * target
    assert all(p.endswith("\n\n") for p in parts[:-1])  # cut after the blank line that ends a paragraph
    assert not any(p[0].isspace() for p in parts)


@pytest.mark.parametrize("edit", ["insert", "delete"])
def test_an_edit_near_the_start_leaves_the_later_segments_as_they_were(edit: str) -> None:
    text = prose(random.Random(11), 4000)
    at = text.index("\n\n", 300) + 2
    edited = (text[:at] + "A new paragraph, inserted.\n\n" + text[at:] if edit == "insert"
              else text[:at] + text[text.index("\n\n", at) + 2:])
    before, after = cut(text, 4000), cut(edited, 4000)
    assert len(before) > 50
    assert sum(p not in set(before) for p in after) <= 2
    assert after[3:] == before[len(before) - len(after) + 3:]


def test_text_without_blank_lines_is_cut_at_hashed_line_ends_and_resynchronises() -> None:
    rng = random.Random(3)
    logs = "".join(f"2024-01-01 event {rng.randrange(10**6)} {'x' * rng.randint(0, 60)}\n" for _ in range(20000))
    before, after = cut(logs, 4000), cut("one inserted line\n" + logs, 4000)
    assert all(3000 <= len(p) <= 8000 and p.endswith("\n") for p in before[:-1])
    assert sum(p not in set(before) for p in after) <= 2


def test_paragraphs_as_long_as_half_the_target_always_cut() -> None:
    # target 16: a paragraph of >= 8 characters ends the segment at the next non-blank line
    text = "aaaaaaaaaa\n\nbbbbbbbbbb\n\n\ncc\n"
    assert cut(text, 16) == ["aaaaaaaaaa\n\n", "bbbbbbbbbb\n\n\n", "cc\n"]


def test_a_long_line_is_cut_before_it_when_the_segment_is_big_enough_else_inside_it() -> None:
    line = "y" * 70 + "\n"
    assert cut("ab\nab\nab\n" + line, 16) == ["ab\nab\nab\n", "y" * 32, "y" * 32, "y" * 6 + "\n"]
    assert cut("ab\n" + line, 16) == ["ab\n" + "y" * 29, "y" * 32, "y" * 9 + "\n"]


def test_text_without_newlines_is_cut_every_twice_the_target() -> None:
    assert cut("x" * 100, 16, read=7) == ["x" * 32, "x" * 32, "x" * 32, "x" * 4]


def test_short_lines_past_one_and_a_half_targets_end_the_segment() -> None:
    # target 16: lines of 10 characters always pass the line hash test (span 2) once the segment has 24
    assert cut("abcdefghi\n" * 7, 16) == ["abcdefghi\n" * 3, "abcdefghi\n" * 3, "abcdefghi\n"]


def test_the_segmenter_refuses_a_tiny_target() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        Segmenter(7)


def test_part_ids_hash_the_text_number_repeats_and_name_their_file() -> None:
    taken: dict[str, int] = {}
    ids = [part_id("docs/big.md", t, taken) for t in ("one", "two", "one", "one")]
    h1, h2 = sha256_hex("one")[:16], sha256_hex("two")[:16]
    assert ids == [f"docs/big.md#part-{h1}", f"docs/big.md#part-{h2}", f"docs/big.md#part-{h1}-2",
                   f"docs/big.md#part-{h1}-3"]
    assert [part_owner(i) for i in ids] == ["docs/big.md"] * 4
    assert part_owner("docs/big.md") is None
    assert part_owner("corpus.jsonl#sha-0123456789abcdef") is None
    assert part_owner("a.md#part-0123456789abcdef/b.md") is None
