"""``sqlite_postings.pack`` / ``unpack``: the saved lists' compact form reads back exactly, in every width,
and the lists saved before it (format 0) still read."""

from __future__ import annotations

import numpy as np
import pytest

from esrag.stores.sqlite_postings import pack, unpack


@pytest.mark.parametrize(("gap", "top", "fmt"), [(1, 3, 0x11), (255, 255, 0x11), (256, 256, 0x22),
                                                 (65_535, 70_000, 0x24), (70_000, 1, 0x41),
                                                 (1 << 32, 1, 0x81), (1 << 40, 2, 0x81)])
def test_rows_and_counts_read_back_exactly_in_the_narrowest_widths(gap: int, top: int, fmt: int) -> None:
    rng = np.random.default_rng(gap)
    gaps = rng.integers(1, gap + 1, size=999)
    gaps[-1] = gap  # the widest gap decides the width
    rows = np.r_[np.int64(7), 7 + np.cumsum(gaps)].astype(np.int64)
    counts = rng.integers(1, top + 1, size=len(rows)).astype(np.float64)
    counts[0] = top
    packed_rows, packed_counts, got_fmt = pack(rows, counts)
    assert got_fmt == fmt
    back_rows, back_counts = unpack(packed_rows, packed_counts, got_fmt, 2)
    assert back_rows.dtype == np.int64 and np.array_equal(back_rows, rows)
    assert np.array_equal(back_counts.astype(np.float64), counts)


def test_a_common_words_million_rows_take_two_megabytes() -> None:
    rows = np.flatnonzero(np.random.default_rng(1).random(1_050_000) < 0.95).astype(np.int64) + 1
    packed_rows, packed_counts, _ = pack(rows, np.ones(len(rows)))
    assert len(packed_rows) == 8 + len(rows) - 1 and len(packed_counts) == len(rows)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_empty_and_single_row_lists(n: int) -> None:
    rows = np.arange(5, 5 + n, dtype=np.int64)
    back_rows, back_counts = unpack(*pack(rows, np.full(n, 2.0)), 2)
    assert back_rows.tolist() == rows.tolist() and back_counts.tolist() == [2] * n


def test_lists_saved_before_formats_still_read() -> None:
    rows = np.array([3, 9, 1 << 40], dtype=np.int64)
    legacy_rows, legacy_counts = rows.astype("<i8").tobytes(), np.array([1, 2, 70_000], dtype="<u4").tobytes()
    back_rows, back_counts = unpack(legacy_rows, legacy_counts, 0, 4)
    assert back_rows.tolist() == rows.tolist() and back_counts.tolist() == [1, 2, 70_000]
    back_rows, back_counts = unpack(legacy_rows, np.array([1, 2, 3], dtype="<u2").tobytes(), 0, 2)
    assert back_counts.tolist() == [1, 2, 3]


@pytest.mark.parametrize(("rows", "counts", "fmt"), [
    (b"\x01" * 8 + b"\x01\x01", b"\x01\x01", 0x11),  # 3 rows, 2 counts
    (b"\x01" * 7, b"\x01", 0x81),  # not a whole int64
    (b"\x01" * 8 + b"\x01", b"\x01\x01", 0x21),  # half a 2-byte gap
    (b"\x01" * 8, b"\x01", 0x33),  # no such widths
    (b"\x01" * 8, b"\x01", -5),
])
def test_damaged_rows_are_a_value_error(rows: bytes, counts: bytes, fmt: int) -> None:
    with pytest.raises(ValueError):
        unpack(rows, counts, fmt, 2)
