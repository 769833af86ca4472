"""esrag.validation: the pure checks of what enters esrag and of what a store gives back, and the filter
limits proved against SQLite itself (the SQL the store runs, on an in-memory database)."""

from __future__ import annotations

import math
import sqlite3

import pytest

from esrag import validation as v
from esrag.errors import ConfigError
from esrag.stores import sqlite_sql as sql


def test_invalid_values_names_every_bad_leaf_and_key_at_any_depth() -> None:
    value = {"query": "ok", "filters": {"team": ["a", "b\ud800"], "k\udc80": "v"},
             "metadata": {"p99": math.nan, "deep": [{"x": [1.5, math.inf]}]}, "n": -math.inf, "fine": 1e308}
    assert v.invalid_values(value) == [
        (("filters", "team", 1), "is not valid Unicode: a lone surrogate U+D800 at character 1"),
        (("filters", "k\\udc80"), "the key is not valid Unicode: a lone surrogate U+DC80 at character 1"),
        (("metadata", "p99"), "must be a finite number, not nan (NaN and infinities are not JSON numbers)"),
        (("metadata", "deep", 0, "x", 1), "must be a finite number, not inf (NaN and infinities are not JSON numbers)"),
        (("n",), "must be a finite number, not -inf (NaN and infinities are not JSON numbers)"),
    ]
    assert v.invalid_values(value, surrogates=False) == [p for p in v.invalid_values(value) if "finite" in p[1]]
    assert v.invalid_values({"a": ["x", 1, True, None, 2.5]}) == []


def test_invalid_values_is_bounded_and_survives_any_depth() -> None:
    assert len(v.invalid_values([math.nan] * 1000)) == v.MAX_REPORTED
    deep: object = math.nan
    for _ in range(5_000):  # past Python's recursion limit
        deep = [deep]
    [(path, _)] = v.invalid_values(deep)
    assert path == (0,) * 5_000


def test_dotted_and_printable() -> None:
    assert v.dotted(("messages", 0, "content")) == "messages.0.content"
    assert v.printable("a\ud800b\nc") == "a\\ud800b\\x0ac"
    assert v.printable("plain é") == "plain é"
    assert v.valid_unicode("a\ud800\n") == "a\\ud800\n"


@pytest.mark.parametrize("doc_id", ["x", "docs/api.md", "records.jsonl#42", "a b", "é/ü", "x" * 512, "..a/b..",
                                    "a.b/c"])
def test_ids_a_url_path_carries_are_valid(doc_id: str) -> None:
    assert v.doc_id_problem(doc_id) is None


@pytest.mark.parametrize(("doc_id", "words"), [
    ("", "must not be empty"), ("x" * 513, "longer than 512 characters (513)"),
    ("a\ud800", "lone surrogate U+D800 at character 1"), ("a\nb", "control character U+000A at character 1"),
    ("a\x85", "control character U+0085"), ("a/../b", "a '..' segment"), ("./a", "a '.' segment"),
    ("..", "a '..' segment"), ("/abs", "an empty segment"), ("a//b", "an empty segment"), ("a/", "an empty segment"),
])
def test_ids_a_url_path_cannot_carry_are_refused(doc_id: str, words: str) -> None:
    problem = v.doc_id_problem(doc_id)
    assert problem is not None and words in problem


def test_filters_problem_states_each_limit() -> None:
    assert v.filters_problem({f"k{i}": "v" for i in range(64)}) is None
    assert v.filters_problem({f"k{i}": "v" for i in range(65)}) == "has 65 keys; at most 64 are allowed"
    assert v.filters_problem({"team": ["v"] * 257}) == "'team' has 257 values; at most 256 per key are allowed"
    assert v.filters_problem({f"k{i}": ("v",) * 16 for i in range(64)}) is None  # 1,024 in all
    assert v.filters_problem({f"k{i}": ("v",) * 17 for i in range(61)}) == (
        "has 1037 values in all; at most 1024 are allowed")
    assert v.filters_problem({"x": 3}) is None  # a wrong type is for the caller's schema, not a size


def test_check_filters_refuses_what_no_store_can_encode() -> None:
    with pytest.raises(ConfigError, match=r"the filter 'team': 'a\\ud800' is not valid Unicode"):
        v.check_filters({"team": ("a\ud800",)})
    with pytest.raises(ConfigError, match="at most 64"):
        v.check_filters({f"k{i}": ("v",) for i in range(65)})
    v.check_filters({"team": "platform"})


def test_clean_metadata_keeps_finite_scalars_and_flattens_objects() -> None:
    raw = {"team": "platform", "p99": math.nan, "inf": math.inf, "n": 3, "ok": True, "x": 2.5, "nul": None,
           "list": [1, 2], "nested": {"b": {"c": "d"}, "e": math.nan}, "bad": "a\ud800"}
    assert v.clean_metadata(raw) == {"team": "platform", "n": 3, "ok": True, "x": 2.5, "nested.b.c": "d",
                                     "bad": "a\\ud800"}
    assert v.clean_metadata(None) == {} and v.clean_metadata([1]) == {} and v.clean_metadata("s") == {}


def test_sqlite_rows_read_whatever_their_metadata_column_holds() -> None:
    assert sql.stored_metadata('{"team":"platform","p99":NaN}') == {"team": "platform"}
    assert sql.stored_metadata("not json") == {}
    assert sql.stored_metadata('{"a":{"b":1}}') == {"a.b": 1}
    assert sql.metadata_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    with pytest.raises(ValueError, match="not JSON compliant"):
        sql.metadata_json({"p99": math.nan})


def _database() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    for statement in sql.schema("standard"):
        conn.execute(statement)
    row = ("a", "d", "s", "t", 0, 1, -1, 0, 1, "x", "y", "now", '{"k0":"v0","team":"platform"}', b"\0", "",
           "hello")
    conn.execute(sql.UPSERT, row)
    conn.execute(sql.UPSERT, ("b", "poisoned", *row[2:12], '{"team":"platform","p99":NaN}', b"\0", "", "hello"))
    return conn


def test_the_largest_filters_allowed_compile_and_run_on_sqlite() -> None:
    conn = _database()
    shapes = [{"team": ("platform", *(f"v{i}" for i in range(v.MAX_FILTER_VALUES - 1)))},
              {"team": "platform", **{f"k{i}": ("v0",) for i in range(v.MAX_FILTER_KEYS - 1)}},
              {f"k{i}": tuple(f"v{j}" for j in range(v.MAX_FILTER_VALUES_TOTAL // v.MAX_FILTER_KEYS))
               for i in range(v.MAX_FILTER_KEYS)}]
    for filters in shapes:
        for built in (sql.bm25_sql("hello", filters, 10), sql.dense_filter_sql(filters)):
            assert built is not None
            conn.execute(*built).fetchall()  # no "Expression tree is too large"
    # and one key's values far past the limit is what SQLite refuses: the limit is not arbitrary
    over = {"team": tuple(f"v{i}" for i in range(999))}
    with pytest.raises(ConfigError, match="at most 256"):
        sql.filter_sql(over)


def test_a_row_sqlite_cannot_parse_matches_no_metadata_filter_and_fails_no_query() -> None:
    conn = _database()
    built = sql.dense_filter_sql({"team": ("platform",)})
    assert built is not None
    assert [r[0] for r in conn.execute(*built)] == [1]  # the good row; the NaN row neither matches nor fails
    by_id = sql.dense_filter_sql({"doc_id": ("poisoned",)})
    assert by_id is not None and [r[0] for r in conn.execute(*by_id)] == [2]
