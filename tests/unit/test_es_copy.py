"""The pure parts of the server-side copy (``esrag.stores.es_copy``): its request, and how a task's status
and failures are read."""

from __future__ import annotations

from esrag.stores import es_copy
from esrag.stores.es_queries import STORED_FIELDS, VECTOR_FIELD


def test_the_request_copies_the_stored_fields_of_the_live_version_into_the_new_one_as_a_task() -> None:
    body = es_copy.reindex_body("kb-v1", "kb-v2")
    assert body == {
        "source": {"index": "kb-v1", "_source": [*STORED_FIELDS, "ingested_at"], "size": es_copy.COPY_BATCH},
        "dest": {"index": "kb-v2"},
        "conflicts": "abort",
        "slices": "auto",
        "wait_for_completion": False,
        "refresh": False,
    }
    assert VECTOR_FIELD in body["source"]["_source"] and "context" in body["source"]["_source"]


def test_progress_sums_what_the_task_did_of_its_total() -> None:
    assert es_copy.task_progress({"total": 1929, "created": 1000, "updated": 3, "noops": 1, "deleted": 0}) == (1004,
                                                                                                               1929)
    assert es_copy.task_progress({}) == (0, 0)
    assert es_copy.task_progress({"total": None, "created": None}) == (0, 0)


def test_the_first_failure_names_the_chunk_and_the_cause_or_the_search_failure() -> None:
    bulk = {"failures": [{"index": "kb-v2", "id": "c7", "status": 400,
                          "cause": {"type": "strict_dynamic_mapping_exception", "reason": "no [x]"}},
                         {"index": "kb-v2", "id": "c8", "cause": {"type": "t", "reason": "r"}}]}
    assert es_copy.first_failure(bulk) == "chunk 'c7': strict_dynamic_mapping_exception: no [x]"
    search = {"failures": [{"shard": 0, "reason": {"type": "search_context_missing_exception", "reason": "gone"}}]}
    assert es_copy.first_failure(search) == "search_context_missing_exception: gone"
    assert es_copy.first_failure({"failures": ["odd"]}) == "odd"
    assert es_copy.first_failure({"failures": []}) is None
    assert es_copy.first_failure({}) is None


def test_the_copies_a_killed_reindex_left_are_found_by_their_destination_parents_only() -> None:
    tasks = {"nodes": {"n1": {"tasks": {
        "n1:7": {"action": "indices:data/write/reindex", "description": "reindex from [kb-v1] to [kb-v2]"},
        "n1:8": {"action": "indices:data/write/reindex", "description": "reindex from [kb-v1] to [kb-v2]",
                 "parent_task_id": "n1:7"},  # a slice: cancelled with its parent
        "n1:9": {"action": "indices:data/write/reindex", "description": "reindex from [kb-v1] to [other-v2]"},
        "n1:10": {"action": "indices:data/write/reindex", "description": "reindex from [kb-v2] to [kb-v1]"},
        "n1:11": {"action": "indices:data/write/reindex"},
    }}, "n2": {"tasks": {"n2:3": {"description": "reindex from [kb-v3] to [kb-v4][_doc]"}}}, "n3": None}}
    versions = {"kb-v2", "kb-v4"}  # not live, of this index
    assert es_copy.copies_into(tasks, versions.__contains__) == ["n1:7", "n2:3"]
    assert es_copy.copies_into({"nodes": {}}, versions.__contains__) == []
    assert es_copy.copies_into({}, versions.__contains__) == []
