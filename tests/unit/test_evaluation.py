"""Evaluation and tuning: parsing, run building, metric wiring (against hand-computed values), CV hygiene."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from esrag.config import DEFAULT_MODEL
from esrag.errors import ConfigError, LoaderError
from esrag.quality.evaluation import (
    METRICS,
    build_runs,
    doc_ranking,
    eval_index_name,
    evaluate_per_query,
    evaluate_run,
    format_trec_run,
    load_beir,
    method_ranking,
    parse_methods,
    parse_qrels,
    tfidf_run,
    tfidf_tokenize,
)
from esrag.quality.tuning import (
    FusionSetting,
    alpha_grid,
    cross_validate,
    kfold_split,
    score_settings,
    select_best,
    sweep_settings,
    tune,
)
from esrag.retrieval.search import fuse
from esrag.types import Document, ScoredChunk, SearchResponse


def sc(chunk_id: str, doc_id: str, score: float, chunk_index: int = 0) -> ScoredChunk:
    return ScoredChunk(id=chunk_id, score=score, doc_id=doc_id, source=doc_id, title="", text="",
                       chunk_index=chunk_index, section=0)


def ranking(*doc_ids: str) -> list[tuple[str, float]]:
    return [(d, float(10 - i)) for i, d in enumerate(doc_ids)]


# -- metrics wiring, against hand-computed values ---------------------------------------------------------

QRELS = {"q1": {"d1": 1}, "q2": {"d4": 1, "d5": 1}, "q3": {"d7": 1}}
RUN = {
    "q1": ranking("d2", "d1", "d3"),  # relevant at rank 2
    "q2": ranking("d6", "d4"),  # one of two relevant, at rank 2; d5 not retrieved
    # q3 missing from the run: scores 0 everywhere
}


def test_metrics_match_hand_computed_values() -> None:
    ndcg_q1 = (1 / math.log2(3)) / 1.0
    ndcg_q2 = (1 / math.log2(3)) / (1 / math.log2(2) + 1 / math.log2(3))
    expected = {
        "ndcg@10": (ndcg_q1 + ndcg_q2 + 0.0) / 3,
        "mrr@10": (0.5 + 0.5 + 0.0) / 3,
        "recall@100": (1.0 + 0.5 + 0.0) / 3,
    }
    got = evaluate_run(QRELS, RUN, METRICS)
    assert got == pytest.approx(expected, abs=1e-12)
    per_query = evaluate_per_query(QRELS, RUN, ["mrr@10", "recall@100"])
    assert per_query["mrr@10"] == pytest.approx({"q1": 0.5, "q2": 0.5, "q3": 0.0})
    assert per_query["recall@100"] == pytest.approx({"q1": 1.0, "q2": 0.5, "q3": 0.0})


def test_metrics_see_the_run_order_even_when_scores_tie() -> None:
    run = {"q1": [("d2", 1.0), ("d1", 1.0)]}  # our order puts d2 first; ranx must not re-sort the tie
    assert evaluate_run({"q1": {"d1": 1}}, run, ["mrr@10"]) == {"mrr@10": 0.5}


def test_cutoffs_apply() -> None:
    run = {"q1": ranking(*[f"x{i}" for i in range(10)], "d1")}  # relevant at rank 11
    got = evaluate_run({"q1": {"d1": 1}}, run, METRICS)
    assert got["mrr@10"] == 0.0 and got["ndcg@10"] == 0.0 and got["recall@100"] == 1.0


def test_queries_in_run_but_not_judged_are_ignored() -> None:
    got = evaluate_run({"q1": {"d1": 1}}, {"q1": ranking("d1"), "extra": ranking("d1")}, ["mrr@10"])
    assert got == {"mrr@10": 1.0}


# -- runs -------------------------------------------------------------------------------------------------


def test_doc_ranking_keeps_each_documents_best_chunk_and_depth() -> None:
    pairs = [("a", 0.9), ("b", 0.8), ("a", 0.7), ("c", 0.6), ("b", 0.5), ("d", 0.4)]
    assert doc_ranking(pairs, depth=3) == [("a", 0.9), ("b", 0.8), ("c", 0.6)]


def test_method_rankings_from_one_response() -> None:
    resp = SearchResponse(
        bm25=[sc("a1", "A", 10.0), sc("a2", "A", 8.0), sc("b1", "B", 5.0)],
        dense=[sc("c1", "C", 0.9), sc("b1", "B", 0.8), sc("a2", "A", 0.1)],
    )
    assert [d for d, _ in method_ranking(resp, "bm25")] == ["A", "B"]
    assert [d for d, _ in method_ranking(resp, "dense")] == ["C", "B", "A"]
    # linear minmax at 0.5, each side from its floor one mean step below its lowest: bm25 floor 2.5, span 7.5;
    # dense floor -0.3, span 1.2. a1 0.5*1, a2 0.5*(5.5/7.5 + 0.4/1.2), b1 0.5*(2.5/7.5 + 1.1/1.2), c1 0.5*1
    hybrid = method_ranking(resp, "hybrid", alpha=0.5)
    assert [d for d, _ in hybrid] == ["B", "A", "C"]
    assert hybrid[0][1] == pytest.approx(0.5 * (2.5 / 7.5 + 1.1 / 1.2))
    assert hybrid[1][1] == pytest.approx(0.5 * (5.5 / 7.5 + 0.4 / 1.2))
    assert [d for d, _ in method_ranking(resp, "rrf", rrf_k=60)][0] in {"A", "B"}
    with pytest.raises(ConfigError):
        method_ranking(resp, "tfidf")


def test_build_runs_computes_every_asked_method() -> None:
    docs = (Document("A", "a", "apples and pears"), Document("B", "b", "bananas"))
    from esrag.quality.evaluation import BeirDataset

    ds = BeirDataset("t", docs, {"q": "bananas"}, {"q": {"B": 1}})
    resp = SearchResponse(bm25=[sc("b1", "B", 3.0)], dense=[sc("a1", "A", 0.9), sc("b1", "B", 0.7)])
    runs = build_runs(ds, {"q": resp}, ["tfidf", "bm25", "dense"], alpha=0.5)
    assert set(runs) == {"tfidf", "bm25", "dense"}
    assert runs["tfidf"]["q"][0][0] == "B" and len(runs["tfidf"]["q"]) == 1  # A has zero similarity
    assert [d for d, _ in runs["dense"]["q"]] == ["A", "B"]


def test_tfidf_tokenisation_lowercases_and_drops_punctuation() -> None:
    assert tfidf_tokenize("Hello, World! it's sys.path_hooks (v3.11)") == [
        "hello", "world", "it", "s", "sys", "path", "hooks", "v3", "11"]
    assert tfidf_tokenize("  ...  ") == []
    assert tfidf_tokenize("Ünïcode ÉTÉ") == ["ünïcode", "été"]


def test_tfidf_run_ranks_by_cosine_over_whole_documents() -> None:
    docs = [Document("1", "s", "the cat sat on the mat", title="Cats"),
            Document("2", "s", "dogs bark at the mailman"),
            Document("3", "s", "a cat and a dog")]
    run = tfidf_run(docs, {"q": "CAT!", "none": "zebra"})
    assert [d for d, _ in run["q"]] in (["1", "3"], ["3", "1"])
    assert {d for d, _ in run["q"]} == {"1", "3"}
    assert run["none"] == []
    assert all(0 < s <= 1 for _, s in run["q"])
    title_run = tfidf_run(docs, {"t": "cats"})  # the title is part of the document
    assert [d for d, _ in title_run["t"]] == ["1"]


def test_format_trec_run() -> None:
    text = format_trec_run({"q2": [("d9", 0.5)], "q1": [("d1", 2.0), ("d2", 1.25)]}, "esrag-bm25")
    assert text == ("q1 Q0 d1 1 2.000000 esrag-bm25\nq1 Q0 d2 2 1.250000 esrag-bm25\n"
                    "q2 Q0 d9 1 0.500000 esrag-bm25\n")


def test_parse_methods() -> None:
    assert parse_methods([]) == ["tfidf", "bm25", "dense", "hybrid", "rrf"]
    assert parse_methods(["rrf,bm25", "BM25"]) == ["bm25", "rrf"]
    with pytest.raises(ConfigError):
        parse_methods(["bm52"])


def test_eval_index_name() -> None:
    assert eval_index_name("python-faq", DEFAULT_MODEL) == "eval-python-faq"
    assert eval_index_name("My Data", "/models/BGE-small/") == "eval-my-data-bge-small"


# -- loading ----------------------------------------------------------------------------------------------


def test_parse_qrels_skips_header_and_non_relevant_rows() -> None:
    lines = ["query-id\tcorpus-id\tscore\n", "q1\td1\t1\n", "q1\td2\t0\n", "q2\td3\t2\n", "\n", "q3\td4\t0\n"]
    assert parse_qrels(lines) == {"q1": {"d1": 1}, "q2": {"d3": 2}}
    with pytest.raises(LoaderError):
        parse_qrels(["q1\td1\t1\n", "q1\td2\tx\n"])


def write_beir(root: Path) -> None:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in [
        {"_id": "d1", "title": "One", "text": "first"}, {"_id": "d2", "text": "second"}]) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in [
        {"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "unjudged"}]) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td2\t1\n")


def test_load_beir_keeps_judged_queries(tmp_path: Path) -> None:
    write_beir(tmp_path / "tiny")
    ds = load_beir(tmp_path / "tiny")
    assert ds.name == "tiny"
    assert [d.doc_id for d in ds.documents] == ["d1", "d2"]
    assert ds.documents[0].title == "One" and ds.documents[1].title == ""
    assert ds.queries == {"q1": "first?"}
    assert ds.qrels == {"q1": {"d1": 1}}
    with pytest.raises(LoaderError, match="dev.tsv"):
        load_beir(tmp_path / "tiny", split="dev")


def test_load_beir_rejects_duplicate_ids(tmp_path: Path) -> None:
    write_beir(tmp_path / "dup")
    with (tmp_path / "dup" / "corpus.jsonl").open("a") as fh:
        fh.write(json.dumps({"_id": "d1", "text": "again"}) + "\n")
    with pytest.raises(LoaderError, match="duplicate"):
        load_beir(tmp_path / "dup")


# -- tuning -----------------------------------------------------------------------------------------------


def test_alpha_grid_and_sweep() -> None:
    assert alpha_grid(0.1) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert alpha_grid(0.3) == [0.0, 0.3, 0.6, 0.9, 1.0]
    grid = sweep_settings(0.1)
    assert len(grid) == 5 * (3 * 11 + 6)
    assert [w for w in dict.fromkeys(s.doc_weight for s in grid)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    at_half = [s for s in grid if s.doc_weight == 0.5]
    assert {s.normalization for s in at_half if s.fusion == "linear"} == {"minmax", "zscore", "none"}
    assert [s.rrf_k for s in at_half if s.fusion == "rrf"] == [1, 10, 20, 40, 60, 100]
    assert len(sweep_settings(0.5, ["zscore"], [60], [0.0, 0.0])) == 3 + 1  # a repeated weight counts once
    with pytest.raises(ConfigError):
        alpha_grid(0.0)
    with pytest.raises(ConfigError, match="doc_weight"):
        sweep_settings(0.5, ["zscore"], [60], [1.5])
    with pytest.raises(ConfigError, match="section weight"):
        sweep_settings(0.5, ["zscore"], [60], [])


def test_config_updates() -> None:
    assert FusionSetting("linear", 0.3, "zscore", doc_weight=0.25).config_updates() == {
        "fusion": "linear", "alpha": 0.3, "normalization": "zscore", "doc_weight": 0.25}
    assert FusionSetting("rrf", 0.5, "minmax", 20).config_updates() == {
        "fusion": "rrf", "alpha": 0.5, "rrf_k": 20, "doc_weight": 0.0}


def test_kfold_split_is_a_seeded_partition() -> None:
    qids = [f"q{i}" for i in range(23)]
    folds = kfold_split(qids, 5, seed=1)
    assert len(folds) == 5
    assert sorted(q for f in folds for q in f) == sorted(qids)
    assert {len(f) for f in folds} <= {4, 5}
    assert kfold_split(list(reversed(qids)), 5, seed=1) == folds  # input order does not matter
    assert kfold_split(qids, 5, seed=2) != folds
    with pytest.raises(ConfigError):
        kfold_split(qids, 1)
    with pytest.raises(ConfigError):
        kfold_split(qids[:3], 4)


def test_cross_validation_never_chooses_on_the_fold_it_scores() -> None:
    qids = [f"q{i}" for i in range(20)]
    a, b = FusionSetting("linear", 0.2), FusionSetting("linear", 0.8)
    scores = {a: {q: 0.5 for q in qids}, b: {q: 0.4 for q in qids}}
    folds = kfold_split(qids, 4, seed=0)
    # b is much better on fold 0's queries only: choosing on fold 0 itself would pick b for it.
    for q in folds[0]:
        scores[b][q] = 1.0
    used: list[tuple[int, set[str]]] = []

    def spy(s: Mapping[FusionSetting, Mapping[str, float]], train: Sequence[str]) -> FusionSetting:
        used.append((len(used), set(train)))
        return select_best(s, train)

    cv = cross_validate(scores, folds, select=spy)
    assert len(used) == len(folds)
    for (i, train), fold, result in zip(used, folds, cv.folds, strict=True):
        assert train.isdisjoint(fold), f"fold {i} chose on its own test queries"
        assert train | set(fold) == set(qids)
        assert set(result.test_qids) == set(fold) and set(result.train_qids) == train
    assert cv.folds[0].chosen == a  # chosen on the other folds, where a wins
    assert cv.folds[0].test_score == pytest.approx(0.5)
    # held-out mean over all queries: fold 0 scored with a (0.5); other folds choose b (its fold-0 boost
    # lifts its training mean to 0.6 > 0.5) and score 0.4 on their own queries.
    assert cv.heldout_mean == pytest.approx((5 * 0.5 + 15 * 0.4) / 20)


def test_select_best_breaks_ties_by_order() -> None:
    a, b = FusionSetting("linear", 0.2), FusionSetting("linear", 0.8)
    assert select_best({a: {"q": 1.0}, b: {"q": 1.0}}, ["q"]) == a
    assert select_best({b: {"q": 1.0}, a: {"q": 1.0}}, ["q"]) == b


def test_tune_end_to_end_on_fixed_candidates() -> None:
    qrels = {f"q{i}": {"R": 1} for i in range(6)}
    # BM25 puts the relevant doc first, dense puts it third: low alpha wins.
    resp = SearchResponse(bm25=[sc("r", "R", 9.0), sc("x", "X", 5.0), sc("y", "Y", 1.0)],
                          dense=[sc("x", "X", 0.9), sc("y", "Y", 0.8), sc("r", "R", 0.2)])
    grid = sweep_settings(0.5, ["minmax"], [60], [0.0])
    scores = score_settings(qrels, {q: resp for q in qrels}, grid)
    result = tune(scores, folds=3, seed=0)
    assert result.curve[FusionSetting("linear", 0.0, "minmax")] == pytest.approx(1.0)
    assert result.curve[FusionSetting("linear", 1.0, "minmax")] == pytest.approx(0.5)  # rank 3: 1/log2(4)
    assert result.best == FusionSetting("linear", 0.0, "minmax")
    assert result.cv.heldout_mean == pytest.approx(1.0)


def test_tune_chooses_a_document_weight_where_document_evidence_ranks_better() -> None:
    qrels = {f"q{i}": {"SHORT": 1} for i in range(6)}
    # a long document's later chunk edges out the short relevant one on both sides; its opening chunk is weak
    resp = SearchResponse(
        bm25=[sc("long#3", "LONG", 9.0, 3), sc("short#0", "SHORT", 8.5), sc("long#0", "LONG", 1.0)],
        dense=[sc("long#3", "LONG", 0.80, 3), sc("short#0", "SHORT", 0.78), sc("long#0", "LONG", 0.20)])
    grid = sweep_settings(0.5, ["minmax"], [60], [0.0, 0.5])
    result = tune(score_settings(qrels, {q: resp for q in qrels}, grid), folds=3, seed=0)
    assert result.curve[FusionSetting("linear", 0.5, "minmax", doc_weight=0.0)] == pytest.approx(1 / math.log2(3))
    assert result.curve[FusionSetting("linear", 0.5, "minmax", doc_weight=0.5)] == pytest.approx(1.0)
    assert result.best.doc_weight == 0.5
    assert method_ranking(resp, "dense", doc_weight=0.5)[0][0] == "SHORT"
    assert method_ranking(resp, "bm25", doc_weight=0.0)[0][0] == "LONG"


def test_fuse_with_document_evidence_reports_raw_store_scores_and_ranks() -> None:
    bm25 = [sc("long#3", "LONG", 9.0, 3), sc("short#0", "SHORT", 8.5), sc("long#0", "LONG", 1.0)]
    dense = [sc("short#0", "SHORT", 0.7), sc("long#3", "LONG", 0.6, 3)]
    hits = fuse(bm25, dense, "hybrid", "linear", 0.5, "minmax", 60, doc_weight=0.5)
    assert [h.id for h in hits] == ["short#0", "long#3", "long#0"]
    by_id = {h.id: h for h in hits}
    assert (by_id["long#3"].bm25_score, by_id["long#3"].bm25_rank) == (9.0, 1)
    assert (by_id["long#3"].dense_score, by_id["long#3"].dense_rank) == (0.6, 2)
    assert (by_id["long#0"].dense_score, by_id["long#0"].dense_rank) == (None, None)
    # the normalised scores are of the weighted ones: bm25 long#3 = 0.5*9 + 0.5*1 = 5, short#0 = 8.5
    assert by_id["short#0"].bm25_norm == pytest.approx(1.0)
    # (floor: 1.0 - (8.5 - 1.0) / 2 = -2.75)
    assert by_id["long#3"].bm25_norm == pytest.approx((5.0 + 2.75) / (8.5 + 2.75))
    assert by_id["short#0"].score == pytest.approx(0.5 * by_id["short#0"].bm25_norm + 0.5 * by_id["short#0"].dense_norm)
    # BM25 alone: the long document's chunk first without document evidence, the short one with it
    assert [h.id for h in fuse(bm25, [], "bm25", "linear", 0.0, "minmax", 60)][:2] == ["long#3", "short#0"]
    assert [h.id for h in fuse(bm25, [], "bm25", "linear", 0.0, "minmax", 60, doc_weight=0.5)][:2] == [
        "short#0", "long#3"]
