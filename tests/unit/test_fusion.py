"""Fusion against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esrag.retrieval.fusion import Normalized, linear_fusion, normalize, rrf_fusion, with_document_evidence


def test_minmax_scales_from_the_floor_one_mean_step_below_a_cut_list() -> None:
    # cut list: floor = 0 - (10 - 0) / 2 = -5, span 15
    assert normalize([10.0, 5.0, 0.0], "minmax") == Normalized(pytest.approx([1.0, 2 / 3, 1 / 3]), 0.0)
    # complete BM25 list: every other chunk scores exactly 0
    assert normalize([10.0, 5.0, 2.0], "minmax", floor=0.0, absent=7).scores == pytest.approx([1.0, 0.5, 0.2])


def test_minmax_of_equal_scores_is_one() -> None:
    assert normalize([3.0, 3.0], "minmax").scores == [1.0, 1.0]
    assert normalize([7.0], "minmax") == Normalized([1.0], 0.0)
    assert normalize([7.0], "minmax", floor=0.0, absent=40) == Normalized([1.0], 0.0)


def test_zscore_is_distance_from_the_floor_in_population_stds() -> None:
    # cut list: floor 0 enters once; population {1, 2, 3, 0}: mean 1.5, variance 1.25
    s = math.sqrt(1.25)
    assert normalize([1.0, 2.0, 3.0], "zscore") == Normalized(pytest.approx([1 / s, 2 / s, 3 / s]), 0.0)
    # equal scores: floor one below; population {4, 4, 3}: variance 2/9
    assert normalize([4.0, 4.0], "zscore").scores == pytest.approx([3 / math.sqrt(2), 3 / math.sqrt(2)])


def test_zscore_of_a_lone_hit_in_a_complete_list_is_m_over_sqrt_m_minus_one() -> None:
    # population {4, 0, 0, 0, 0}: mean 0.8, std 1.6 -> 4 / 1.6 = 2.5 = 5 / sqrt(4)
    assert normalize([4.0], "zscore", floor=0.0, absent=4) == Normalized(pytest.approx([2.5]), 0.0)
    assert normalize([0.3], "zscore", floor=0.0, absent=99).scores == pytest.approx([100 / math.sqrt(99)])
    # two equal hits among four: population {3, 3, 0, 0}, std 1.5
    assert normalize([3.0, 3.0], "zscore", floor=0.0, absent=2).scores == pytest.approx([2.0, 2.0])
    # a lone candidate, nothing absent: the hit and its floor, two points
    assert normalize([0.7], "zscore").scores == pytest.approx([2.0])
    assert normalize([0.7], "zscore", floor=0.0, absent=0).scores == pytest.approx([2.0])


def test_none_keeps_raw_scores_and_empty_is_empty() -> None:
    assert normalize([2.5, 1.0], "none") == Normalized([2.5, 1.0], 0.0)
    # scores down to 0 or below: absent is one mean step below the lowest
    assert normalize([0.5, -0.5], "none") == Normalized([0.5, -0.5], -1.5)
    for method in ("minmax", "zscore", "none"):
        assert normalize([], method).scores == []


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30),
    st.sampled_from(["minmax", "zscore", "none"]),
    st.one_of(st.none(), st.just(0.0)),
    st.integers(0, 200),
)
def test_every_returned_score_stands_above_not_returned(scores: list[float], method: str, floor: float | None,
                                                        absent: int) -> None:
    out = normalize(sorted(scores, reverse=True), method, floor, absent)
    assert all(v > out.absent for v in out.scores)
    assert out.scores == sorted(out.scores, reverse=True)  # the order is kept


def test_unknown_normalization_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize([1.0], "softmax")


def test_linear_fusion_hand_computed_minmax() -> None:
    bm25 = [("a", 12.0), ("b", 8.0), ("c", 4.0)]
    dense = [("b", 0.9), ("d", 0.8), ("a", 0.5)]
    fused = linear_fusion(bm25, dense, alpha=0.4)
    # bm25: floor 4 - 4 = 0, span 12: a 1, b 2/3, c 1/3; dense: floor 0.5 - 0.2 = 0.3, span 0.6: b 1, d 5/6, a 1/3
    expected = {
        "a": 0.6 * 1.0 + 0.4 * (1 / 3),    # 0.7333
        "b": 0.6 * (2 / 3) + 0.4 * 1.0,    # 0.8
        "c": 0.6 * (1 / 3) + 0.4 * 0.0,    # 0.2 (only bm25, its lowest: still above not returned)
        "d": 0.6 * 0.0 + 0.4 * (5 / 6),    # 0.3333 (only dense)
    }
    assert [f.id for f in fused] == ["b", "a", "d", "c"]
    for f in fused:
        assert f.score == pytest.approx(expected[f.id])
    b = fused[0]
    assert (b.bm25_score, b.dense_score, b.bm25_rank, b.dense_rank) == (8.0, 0.9, 2, 1)
    d = next(f for f in fused if f.id == "d")
    assert d.bm25_score is None and d.bm25_rank is None and d.bm25_norm == 0.0


def test_linear_fusion_hand_computed_zscore() -> None:
    bm25 = [("a", 3.0), ("b", 1.0)]      # floor -1; population {3, 1, -1}: std 2 sqrt(2/3) -> a sqrt(6), b sqrt(1.5)
    dense = [("b", 0.8), ("c", 0.4)]     # floor 0; population {0.8, 0.4, 0}: std 0.4 sqrt(2/3) -> b sqrt(6) ...
    fused = {f.id: f.score for f in linear_fusion(bm25, dense, alpha=0.5, normalization="zscore")}
    # a side that did not return a hit gives it 0, below its lowest hit
    r6, r15 = math.sqrt(6), math.sqrt(1.5)
    assert fused == pytest.approx({"a": 0.5 * r6, "b": 0.5 * r15 + 0.5 * r6, "c": 0.5 * r15})


def test_a_lone_bm25_hit_of_a_complete_list_counts_m_over_sqrt_m_minus_one() -> None:
    # BM25 returned one chunk of the 4 in the union, fewer than asked: the 3 others score exactly 0
    dense = [("p", 0.9), ("q", 0.8), ("x", 0.7), ("r", 0.6)]
    fused = {f.id: f for f in linear_fusion([("x", 4.0)], dense, 0.65, "zscore", bm25_floor=0.0)}
    assert fused["x"].bm25_norm == pytest.approx(4 / math.sqrt(3))
    # dense: floor 0.5; population {0.9 .. 0.5}: std sqrt(0.02)
    std = math.sqrt(0.02)
    assert fused["x"].dense_norm == pytest.approx(0.2 / std)
    assert fused["x"].score == pytest.approx(0.35 * 4 / math.sqrt(3) + 0.65 * 0.2 / std)
    assert fused["p"].score == pytest.approx(0.65 * 0.4 / std) and fused["p"].bm25_norm == 0.0
    # the same list, cut: the floor is one below the hit, entering once -> 2 standard deviations
    cut = {f.id: f for f in linear_fusion([("x", 4.0)], dense, 0.65, "zscore")}
    assert cut["x"].bm25_norm == pytest.approx(2.0)


@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=2), st.floats(0.01, 100)), min_size=1, max_size=15,
             unique_by=lambda t: t[0]),
    st.lists(st.tuples(st.text(min_size=1, max_size=2), st.floats(-1, 1)), max_size=15, unique_by=lambda t: t[0]),
    st.floats(0, 0.99),
    st.sampled_from(["minmax", "zscore", "none"]),
    st.booleans(),
)
def test_a_chunk_bm25_returned_gets_more_than_had_it_not(bm25: list[tuple[str, float]],
                                                         dense: list[tuple[str, float]], alpha: float,
                                                         normalization: str, complete: bool) -> None:
    bm25 = sorted(bm25, key=lambda t: -t[1])
    dense = sorted(dense, key=lambda t: -t[1])
    for f in linear_fusion(bm25, dense, alpha, normalization, bm25_floor=0.0 if complete else None):
        if f.bm25_rank is not None:
            assert f.bm25_norm > 0.0
            assert f.score > alpha * f.dense_norm  # what it had, had BM25 not returned it
        else:
            assert f.bm25_norm == 0.0


def test_alpha_zero_is_exact_bm25_order_and_alpha_one_exact_knn_order() -> None:
    bm25 = [("a", 5.0), ("b", 3.0), ("c", 3.0), ("d", 1.0)]
    dense = [("d", 0.99), ("e", 0.98), ("c", 0.5), ("a", 0.5)]
    assert [f.id for f in linear_fusion(bm25, dense, 0.0)][:4] == ["a", "b", "c", "d"]
    assert [f.id for f in linear_fusion(bm25, dense, 1.0)][:4] == ["d", "e", "c", "a"]


@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=3), st.floats(0, 100)), max_size=20, unique_by=lambda t: t[0]),
    st.lists(st.tuples(st.text(min_size=1, max_size=3), st.floats(0, 1)), max_size=20, unique_by=lambda t: t[0]),
)
def test_alpha_extremes_preserve_each_side_order(bm25: list[tuple[str, float]],
                                                 dense: list[tuple[str, float]]) -> None:
    bm25 = sorted(bm25, key=lambda t: -t[1])
    dense = sorted(dense, key=lambda t: -t[1])
    for normalization in ("minmax", "zscore", "none"):
        at0 = [f.id for f in linear_fusion(bm25, dense, 0.0, normalization)]
        assert at0[: len(bm25)] == [i for i, _ in bm25]
        at1 = [f.id for f in linear_fusion(bm25, dense, 1.0, normalization)]
        assert at1[: len(dense)] == [i for i, _ in dense]


def test_ties_break_by_rank_on_the_heavier_side_then_id() -> None:
    bm25 = [("x", 1.0), ("y", 1.0)]
    dense = [("y", 0.5), ("x", 0.5)]
    # all normalised to 1.0 on both sides: every fused score equal
    assert [f.id for f in linear_fusion(bm25, dense, 0.3)] == ["x", "y"]
    assert [f.id for f in linear_fusion(bm25, dense, 0.7)] == ["y", "x"]
    assert [f.id for f in linear_fusion([], [("b", 1.0), ("a", 1.0)], 0.5)] == ["b", "a"]


def test_empty_and_one_sided_lists() -> None:
    assert linear_fusion([], [], 0.5) == []
    only_bm25 = linear_fusion([("a", 2.0), ("b", 1.0)], [], 0.5)
    # floor 1 - 1 = 0: a 1, b 0.5
    assert [(f.id, f.score) for f in only_bm25] == [("a", 0.5), ("b", 0.25)]
    only_dense = rrf_fusion([], [("a", 0.9)], k=60)
    assert only_dense[0].score == pytest.approx(1 / 61)


def test_duplicate_ids_keep_their_best_rank() -> None:
    fused = linear_fusion([("a", 3.0), ("a", 1.0), ("b", 2.0)], [], 0.0)
    assert [(f.id, f.bm25_rank) for f in fused] == [("a", 1), ("b", 3)]


def test_rrf_hand_computed() -> None:
    bm25 = [("a", 9.0), ("b", 5.0)]
    dense = [("b", 0.9), ("c", 0.1)]
    fused = {f.id: f for f in rrf_fusion(bm25, dense, k=10)}
    assert fused["a"].score == pytest.approx(1 / 11)
    assert fused["b"].score == pytest.approx(1 / 12 + 1 / 11)
    assert fused["c"].score == pytest.approx(1 / 12)
    assert [f.id for f in rrf_fusion(bm25, dense, k=10)] == ["b", "a", "c"]


def test_rrf_alpha_weights_the_sides() -> None:
    bm25 = [("a", 9.0)]
    dense = [("b", 0.9)]
    fused = {f.id: f.score for f in rrf_fusion(bm25, dense, k=60, alpha=0.25)}
    assert fused == pytest.approx({"a": 1.5 / 61, "b": 0.5 / 61})


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_out_of_range_is_rejected(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        linear_fusion([], [], alpha)
    with pytest.raises(ValueError, match="alpha"):
        rrf_fusion([], [], alpha=alpha)


# -- document evidence --------------------------------------------------------------------------------------


def test_document_evidence_hand_computed() -> None:
    # (id, doc_id, chunk_index, section, score), best first; A's opening chunk is retrieved, B's is not
    chunks = [("a3", "A", 3, 0, 0.9), ("b2", "B", 2, 0, 0.8), ("a0", "A", 0, 0, 0.5), ("c0", "C", 0, 0, 0.4)]
    out = with_document_evidence(chunks, 0.5)
    # B's opening chunk is missing: it counts as the lowest candidate score (0.4)
    assert [i for i, _ in out] == ["a3", "b2", "a0", "c0"]
    assert [s for _, s in out] == pytest.approx([0.7, 0.5 * 0.8 + 0.5 * 0.4, 0.5, 0.4])
    # weight 1: every chunk scores as its section's opening chunk; equal scores keep the input order
    at_one = with_document_evidence(chunks, 1.0)
    assert [i for i, _ in at_one] == ["a3", "a0", "b2", "c0"]
    assert [s for _, s in at_one] == pytest.approx([0.5, 0.5, 0.4, 0.4])


def test_document_evidence_is_per_section_and_unknown_sections_stand_for_themselves() -> None:
    # doc A has two sections, starting at chunks 0 and 2; its chunk 3 is weighed with chunk 2, not chunk 0
    chunks = [("a3", "A", 3, 2, 0.9), ("a2", "A", 2, 2, 0.7), ("a0", "A", 0, 0, 0.1), ("x5", "X", 5, -1, 0.6)]
    out = dict(with_document_evidence(chunks, 0.5))
    assert out["a3"] == pytest.approx(0.8) and out["a2"] == pytest.approx(0.7)
    assert out["a0"] == pytest.approx(0.1)
    assert out["x5"] == pytest.approx(0.6)  # section unknown (written before sections were recorded)


def test_document_evidence_reorders_documents() -> None:
    # a long document's third chunk beats a short document's only chunk alone, not with its weak opening
    chunks = [("long#2", "long", 2, 0, 0.62), ("short#0", "short", 0, 0, 0.60), ("long#0", "long", 0, 0, 0.30)]
    assert [i for i, _ in with_document_evidence(chunks, 0.0)] == ["long#2", "short#0", "long#0"]
    assert [i for i, _ in with_document_evidence(chunks, 0.5)] == ["short#0", "long#2", "long#0"]


def test_document_evidence_weight_zero_is_identity_and_empty_is_empty() -> None:
    chunks = [("x", "X", 1, 0, 3.0), ("y", "Y", 0, 0, 2.0), ("z", "X", 0, 0, 1.0)]
    assert with_document_evidence(chunks, 0.0) == [("x", 3.0), ("y", 2.0), ("z", 1.0)]
    assert with_document_evidence([], 0.5) == []


@given(
    st.lists(st.tuples(st.sampled_from("ABCD"), st.integers(0, 4), st.integers(-1, 2), st.floats(-10, 10)),
             max_size=25),
    st.floats(0, 1),
)
def test_document_evidence_keeps_each_sections_chunk_order(
        raw: list[tuple[str, int, int, float]], weight: float) -> None:
    chunks = sorted(((f"{d}{i}#{n}", d, i, min(sec, i), s) for n, (d, i, sec, s) in enumerate(raw)),
                    key=lambda c: -c[4])
    out = with_document_evidence(chunks, weight)
    assert sorted(i for i, _ in out) == sorted(c[0] for c in chunks)
    assert [s for _, s in out] == sorted((s for _, s in out), reverse=True)
    key = {c[0]: (c[1], c[3]) for c in chunks}
    for group in {(c[1], c[3]) for c in chunks if c[3] >= 0}:
        assert [i for i, _ in out if key[i] == group] == [c[0] for c in chunks if (c[1], c[3]) == group]


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan])
def test_doc_weight_out_of_range_is_rejected(weight: float) -> None:
    with pytest.raises(ValueError, match="doc_weight"):
        with_document_evidence([("a", "A", 0, 0, 1.0)], weight)
