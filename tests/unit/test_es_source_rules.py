"""The Elasticsearch source's pure parts: the exact requests it sends, and how a record becomes a Document."""

from __future__ import annotations

import math

import pytest

from esrag.errors import ConfigError
from esrag.sources import es_records as rec
from esrag.sources import es_requests as req
from esrag.sources.elasticsearch import parse_query, parse_slice
from esrag.sources.loaders import Skipped
from esrag.types import Document, Heading, version_sha

QUERY = {"term": {"status": "published"}}
FIELDS = rec.RecordFields(("description",), "name", ("brand", "specs.color"))


def test_the_id_page_reads_versions_and_no_source_through_the_point_in_time() -> None:
    assert req.id_page_body("PIT", "5m", None, "_id", 1000) == {
        "pit": {"id": "PIT", "keep_alive": "5m"}, "query": {"match_all": {}}, "sort": [{"_shard_doc": "asc"}],
        "size": 1000, "_source": False, "seq_no_primary_term": True, "track_total_hits": False}


def test_a_sliced_page_after_a_sort_value_with_an_id_field_and_a_query() -> None:
    assert req.id_page_body("PIT", "30s", QUERY, "sku", 50, [3, 17], slice_id=1, slices=4) == {
        "pit": {"id": "PIT", "keep_alive": "30s"}, "query": QUERY, "sort": [{"_shard_doc": "asc"}], "size": 50,
        "_source": ["sku"], "seq_no_primary_term": True, "track_total_hits": False,
        "slice": {"id": 1, "max": 4}, "search_after": [3, 17]}


def test_the_other_requests() -> None:
    assert req.open_pit_args("products", "5m") == {"index": "products", "keep_alive": "5m"}
    assert req.fetch_args([("products-v2", "a"), ("products-v1", "b")], ["description", "name"]) == {
        "docs": [{"_index": "products-v2", "_id": "a"}, {"_index": "products-v1", "_id": "b"}],
        "_source": ["description", "name"]}
    assert req.exists_count_args("products", QUERY, "description") == {
        "index": "products", "query": {"bool": {"filter": [QUERY, {"exists": {"field": "description"}}]}}}
    assert req.exists_count_args("products", None, "d") == {
        "index": "products", "query": {"bool": {"filter": [{"exists": {"field": "d"}}]}}}
    assert req.ids_check_body("products", None, "_id", ["a", "b"]) == {
        "index": "products", "query": {"bool": {"filter": [{"ids": {"values": ["a", "b"]}}]}}, "size": 2,
        "_source": False, "track_total_hits": False}
    assert req.ids_check_body("products", QUERY, "sku", ["1"]) == {
        "index": "products", "query": {"bool": {"filter": [QUERY, {"terms": {"sku": ["1"]}}]}}, "size": 1,
        "_source": ["sku"], "track_total_hits": False}


def test_field_paths_read_nested_objects_dotted_keys_and_lists_of_objects() -> None:
    source = {"a": {"b": {"c": 1}}, "x.y": 2, "items": [{"n": "one"}, {"n": ["two", "three"]}, {"m": 4}], "e": None}
    assert rec.field_value(source, "a.b.c") == 1
    assert rec.field_value(source, "a.b") == {"c": 1}
    assert rec.field_value(source, "x.y") == 2
    assert rec.field_value(source, "items.n") == ["one", "two", "three"]
    assert rec.field_value(source, "missing.path") is None and rec.field_value(source, "e") is None


def test_values_become_text_and_objects_are_refused_with_their_path() -> None:
    assert rec.as_text("héllo 港", "f") == "héllo 港"
    assert rec.as_text(3, "f") == "3" and rec.as_text(2.5, "f") == "2.5" and rec.as_text(2.0, "f") == "2"
    assert rec.as_text(True, "f") == "true" and rec.as_text(math.nan, "f") is None
    assert rec.as_text(["a", 1, "", None, "b"], "f") == "a\n1\nb" and rec.as_text([], "f") is None
    assert rec.as_text(None, "f") is None
    with pytest.raises(rec.FieldProblem, match=r"field 'spec' holds an object, not text; .*\(spec.<field>\)"):
        rec.as_text({"k": "v"}, "spec")
    with pytest.raises(rec.FieldProblem, match="field 'l' holds a list with an object"):
        rec.as_text(["a", {"k": 1}], "l")
    assert rec.metadata_value(["x", "y"], "m") == "x, y" and rec.metadata_value(7, "m") == 7
    assert rec.metadata_value(math.inf, "m") is None and rec.metadata_value(False, "m") is False


def hit(source: dict[str, object], **more: object) -> dict[str, object]:
    return {"_index": "products-v1", "_id": "p1", "_seq_no": 9, "_primary_term": 2, "_source": source, **more}


def test_a_record_becomes_a_document_that_points_home() -> None:
    doc = rec.record_document("products", hit({"description": "A lantern.", "name": "Lantern",
                                               "brand": "acme", "specs": {"color": "red"}}), FIELDS)
    assert doc == Document(doc_id="es:products/p1", source="products-v1/_doc/p1", text="A lantern.", title="Lantern",
                           metadata={"brand": "acme", "specs.color": "red", "source_index": "products-v1",
                                     "source_id": "p1"},
                           version=f"{FIELDS.signature}:products-v1:2:9")
    assert doc.sha("sig") == version_sha("es:products/p1", doc.version, "sig")  # known before reading it


def test_several_text_fields_are_sections_and_missing_ones_are_left_out() -> None:
    fields = rec.RecordFields(("summary", "body", "notes"))
    doc = rec.record_document("kb", hit({"summary": "Short.", "body": "Long text.", "notes": None}), fields)
    assert isinstance(doc, Document)
    assert doc.text == "# summary\n\nShort.\n\n# body\n\nLong text."
    assert doc.outline == (Heading(0, 1, "summary"), Heading(len("# summary\n\nShort.\n\n"), 1, "body"))
    assert doc.text[doc.outline[1].start:].startswith("# body")


def test_records_without_text_or_with_an_object_or_a_bad_id_are_skipped_naming_them() -> None:
    assert rec.record_document("products", hit({"name": "x"}), FIELDS) == Skipped(
        "products-v1/_doc/p1", "no text: the text field 'description' is missing or empty")
    assert rec.record_document("products", hit({"description": {"en": "x"}}), FIELDS) == Skipped(
        "products-v1/_doc/p1", "field 'description' holds an object, not text; name a field inside it "
                               "(description.<field>)")
    by_sku = rec.RecordFields(("description",), id_field="sku")
    assert rec.record_document("p", hit({"description": "x", "sku": 12}), by_sku).doc_id == "es:p/12"  # type: ignore[union-attr]
    skipped = rec.record_document("p", hit({"description": "x", "sku": {"a": 1}}), by_sku)
    assert skipped == Skipped("products-v1/_doc/p1", "id field 'sku' holds dict \"{'a': 1}\"; it must hold a string or "
                                                     "an integer")
    bad = rec.record_document("p", hit({"description": "x"}, _id="a\x00b"), FIELDS)
    assert isinstance(bad, Skipped) and "has a control character U+0000" in bad.reason


def test_the_version_changes_with_the_field_choices_and_is_empty_without_sequence_numbers() -> None:
    other = rec.RecordFields(("description",), "name", ("brand",))
    assert rec.version(FIELDS, hit({})) != rec.version(other, hit({}))
    assert rec.version(FIELDS, {"_id": "x", "_index": "i"}) == ""


def test_slices_and_queries_are_parsed_or_refused_naming_the_option() -> None:
    assert parse_slice(None) == (0, 1) and parse_slice("0/4") == (0, 4) and parse_slice(" 3/4 ") == (3, 4)
    for bad in ("4/4", "1/0", "-1/2", "a/b", "1"):
        with pytest.raises(ConfigError, match="--slice"):
            parse_slice(bad)
    assert parse_query('{"term": {"status": "published"}}') == QUERY and parse_query(None) is None
    for bad in ("{", "[1]", "{}", '"x"'):
        with pytest.raises(ConfigError, match="--query"):
            parse_query(bad)
