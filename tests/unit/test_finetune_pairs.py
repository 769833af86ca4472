"""Training pairs, held-out split, folds and guards of ``esrag finetune`` (pure), and the pure parts of
esrag.quality.finetune and esrag.quality.finetune_eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from esrag.errors import ConfigError
from esrag.ingest.chunking import Chunker, chunk_document
from esrag.ingest.context import ContextTemplate
from esrag.quality.finetune import (
    CHECKPOINTS,
    PROVENANCE,
    RUN_FILE,
    TrainConfig,
    pairs_fingerprint,
    precision_for,
    prepare_output,
)
from esrag.quality.finetune_eval import dense_cosines, summarize
from esrag.quality.finetune_pairs import (
    Pair,
    check_disjoint,
    check_enough,
    document_passages,
    fill_negatives,
    heading_pairs,
    index_heading_pairs,
    indexed_passage,
    kfolds,
    qrels_pairs,
    split_heldout,
    subsample,
    with_hard_negatives,
)
from esrag.types import Document, Heading

DOCS = {
    "d1": Document("d1", "s1", "Tides follow the moon.", title="Tides"),
    "d2": Document("d2", "s2", "Bees dance.", title=""),
}


def test_qrels_pairs_one_per_judged_document_in_sorted_order() -> None:
    queries = {"q2": "why do bees dance", "q1": "  sea   rises ", "q3": " "}
    qrels = {"q2": {"d2": 1}, "q1": {"d2": 2, "d1": 1, "missing": 1}, "q3": {"d1": 1}}
    pairs = qrels_pairs(queries, qrels, DOCS)
    assert pairs == [
        Pair("sea rises", "Tides\n\nTides follow the moon.", "q1", "d1", "qrels"),
        Pair("sea rises", "Bees dance.", "q1", "d2", "qrels"),
        Pair("why do bees dance", "Bees dance.", "q2", "d2", "qrels"),
    ]
    assert [p.query_id for p in qrels_pairs(queries, qrels, DOCS, ["q2", "unknown"])] == ["q2"]
    assert qrels_pairs(queries, qrels, DOCS, []) == []
    assert qrels_pairs(queries, qrels, DOCS, max_chars=5)[0].positive == "Tides"


def test_indexed_passage_is_the_first_chunk_as_the_index_embeds_it() -> None:
    """Judged pairs hold what the index embeds: the first chunk with its context, not the title the
    default template leaves out, and not the text past the first chunk."""
    words = " ".join(f"w{i}" for i in range(40))
    doc = _markdown("a.md", f"## Install\n\nRun pip. {words}\n", title="Guide")
    chunker = Chunker(_word_count, chunk_size=12, chunk_overlap=2)
    for template in ("{headings}\n\n{text}", "{title}\n{headings}\n\n{text}", "{text}"):
        ctx = ContextTemplate(template)
        first = chunk_document(doc, chunker, template=ctx)[0]
        read = indexed_passage(chunker, ctx)
        assert read(doc) == first.embed_text.strip()
        assert len(chunk_document(doc, chunker, template=ctx)) > 1 and "w39" not in read(doc)
        assert read(doc).startswith("Guide") == ("{title}" in template)
    assert indexed_passage(chunker, ContextTemplate("{headings}\n\n{text}"))(doc).startswith(
        "Install\n\n## Install\n\nRun pip.")  # the context, then the chunk (its heading line included)
    assert indexed_passage(chunker, ContextTemplate("{text}"), max_chars=7)(doc) == "## Inst"
    assert indexed_passage(chunker, ContextTemplate("{text}"))(Document("b", "b", " \n ")) == ""
    # qrels pairs and the hard negatives' passages read documents the same way
    read = indexed_passage(chunker, ContextTemplate("{headings}\n\n{text}"))
    docs = {"a": doc, "d2": DOCS["d2"]}
    pairs = qrels_pairs({"q": "how to install"}, {"q": {"a": 1, "d2": 1}}, docs, passage=read)
    assert [p.positive for p in pairs] == [read(doc), "Bees dance."]
    assert document_passages(docs.values(), passage=read) == {"a.md": read(doc), "d2": "Bees dance."}
    assert document_passages(docs.values(), max_chars=5) == {"a.md": "Guide", "d2": "Bees "}


def _markdown(doc_id: str, text: str, title: str = "", title_is_name: bool = False) -> Document:
    outline = []
    pos = 0
    for line in text.splitlines(keepends=True):
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            outline.append(Heading(pos, level, line.strip("# \n")))
        pos += len(line)
    return Document(doc_id, doc_id, text, title=title, outline=tuple(outline), title_is_name=title_is_name)


def test_heading_pairs_take_each_heading_to_its_section_without_the_heading_line() -> None:
    body = "Words enough to make a passage worth training on, and then some more."
    doc = _markdown("a.md", f"# Guide\n\nIntro {body}\n\n## Install\n\nRun pip. {body}\n\n## Tiny\n\nshort\n",
                    title="Guide")
    pairs = heading_pairs([doc])
    # "Guide" is the title: the first section's path is empty, so its anchor is the title
    assert [(p.anchor, p.positive[:12], p.kind, p.query_id) for p in pairs] == [
        ("Guide", "Intro Words ", "headings", ""), ("Install", "Run pip. Wor", "headings", "")]


def test_heading_pairs_drop_shared_headings_file_names_and_rst_underlines() -> None:
    body = "A section with enough words to count as a passage of its own, surely."
    a = _markdown("a.md", f"## Usage\n\n{body}\n")
    b = _markdown("b.md", f"## usage\n\n{body} b\n")  # the same heading, case aside: names neither
    named = Document("c.txt", "c", body, title="c.txt", title_is_name=True)
    rst = Document("d.rst", "d", f"Setup\n=====\n\n{body}", title="Setup")
    untitled = Document("e", "e", body, title="")
    pairs = heading_pairs([a, b, named, rst, untitled])
    assert [(p.anchor, p.positive) for p in pairs] == [("Setup", body)]


def test_split_heldout_is_seeded_disjoint_and_order_free() -> None:
    ids = [f"q{i}" for i in range(10)]
    train, heldout = split_heldout(ids, 0.2, seed=3)
    assert len(heldout) == 2 and len(train) == 8 and not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(ids)
    assert split_heldout(reversed(ids + ids), 0.2, seed=3) == (train, heldout)
    assert split_heldout(ids, 0.2, seed=4) != (train, heldout)
    two = split_heldout(["a", "b"], 0.01)  # at least one query is held out
    assert len(two[0]) == len(two[1]) == 1 and sorted(two[0] + two[1]) == ["a", "b"]
    assert len(split_heldout(ids, 0.99)[0]) == 1  # at least one query stays to train on
    for bad in (0.0, 1.0, math.nan):
        with pytest.raises(ConfigError, match="fraction"):
            split_heldout(ids, bad)
    with pytest.raises(ConfigError, match="at least 2"):
        split_heldout(["only"], 0.5)


def test_kfolds_hold_every_query_out_exactly_once() -> None:
    ids = [f"q{i}" for i in range(11)]
    folds = kfolds(ids, 5, seed=1)
    assert len(folds) == 5
    heldout = [q for _, h in folds for q in h]
    assert sorted(heldout) == sorted(ids)
    for train, held in folds:
        assert not set(train) & set(held) and set(train) | set(held) == set(ids)
    with pytest.raises(ConfigError):
        kfolds(ids[:3], 5)


def test_check_enough_counts_distinct_pairs_against_one_batch() -> None:
    pairs = [Pair("a", "x"), Pair("a", "x"), Pair("b", "y")]
    with pytest.raises(ConfigError, match="too few training pairs: 2 distinct, fewer than one batch of 4"):
        check_enough(pairs, 4)
    check_enough(pairs, 2)
    with pytest.raises(ConfigError, match="at least 2"):
        check_enough(pairs, 1)


def test_check_disjoint_by_id_and_by_text() -> None:
    pairs = [Pair("How do I install it?", "p", "q1"), Pair("Setup", "p", "", "d", "headings")]
    check_disjoint(pairs, {"q2": "something else"})
    with pytest.raises(ConfigError, match="1 held-out queries are among the training pairs .first: 'q1'"):
        check_disjoint(pairs, {"q1": "other words"})
    with pytest.raises(ConfigError, match="word for word.*'q9'"):
        check_disjoint(pairs, {"q9": "  setup "})
    check_disjoint([], {"q1": "x"})
    # another judged query that asks the same words is another query
    check_disjoint(pairs, {"q7": "how do I install it?"})


def test_subsample_keeps_input_order_and_is_seeded() -> None:
    pairs = [Pair(str(i), "p") for i in range(10)]
    a = subsample(pairs, 4, seed=0)
    assert len(a) == 4 and a == sorted(a, key=lambda p: int(p.anchor)) and a == subsample(pairs, 4, seed=0)
    assert subsample(pairs, None) == pairs and subsample(pairs, 50) == pairs


def test_precision_follows_the_device() -> None:
    assert precision_for("cpu", "auto", False) == "fp32"
    assert precision_for("cpu", "bf16", True) == "fp32"
    assert precision_for("mps", "fp16", True) == "fp32"
    assert precision_for("cuda", "auto", True) == "bf16"
    assert precision_for("cuda:1", "auto", False) == "fp16"
    assert precision_for("cuda", "fp32", True) == "fp32"
    with pytest.raises(ConfigError, match="does not support it"):
        precision_for("cuda", "bf16", False)
    with pytest.raises(ConfigError, match="precision must be one of"):
        precision_for("cuda", "int4", True)


@pytest.mark.parametrize("bad", [
    {"learning_rate": math.nan}, {"learning_rate": 0.0}, {"epochs": math.inf}, {"epochs": 0},
    {"warmup": 1.0}, {"batch_size": 1}, {"mini_batch_size": -1}, {"max_seq_length": 10**9},
    {"save_steps": 0}, {"max_steps": -1}, {"precision": "fp8"},
])
def test_train_config_refuses_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TrainConfig("m", **bad)  # type: ignore[arg-type]


def test_train_config_names_its_loss() -> None:
    assert TrainConfig("m").loss == "mnrl"
    assert TrainConfig("m", mini_batch_size=8).to_dict()["loss"] == "cached-mnrl"


def test_pairs_fingerprint_orders_and_takes_any_text() -> None:
    a, b = Pair("x", "y"), Pair("\ud800 lone", "z\x00")
    assert pairs_fingerprint([a, b]) != pairs_fingerprint([b, a])
    assert pairs_fingerprint([Pair("ab", "c")]) != pairs_fingerprint([Pair("a", "bc")])


def test_prepare_output_refuses_models_strangers_and_changed_resumes(tmp_path: Path) -> None:
    run = {"pairs": "h", "n_pairs": 2, "config": {"seed": 0}}
    assert prepare_output(tmp_path / "new", run, resume=False) is None
    assert prepare_output(tmp_path, run, resume=False) is None  # empty
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        prepare_output(tmp_path / "f", run, False)
    with pytest.raises(ConfigError, match="exists and is not empty"):
        prepare_output(tmp_path, run, False)
    model = tmp_path / "model"
    model.mkdir()
    (model / PROVENANCE).write_text("{}")
    with pytest.raises(ConfigError, match="already holds a fine-tuned model"):
        prepare_output(model, run, True)
    partial = tmp_path / "partial"
    (partial / CHECKPOINTS / "checkpoint-4").mkdir(parents=True)
    (partial / CHECKPOINTS / "checkpoint-2").mkdir(parents=True)
    (partial / CHECKPOINTS / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (partial / CHECKPOINTS / RUN_FILE).write_text(json.dumps(run))
    with pytest.raises(ConfigError, match="pass --resume"):
        prepare_output(partial, run, False)
    # checkpoint-4 was being written when the run was killed: no trainer state yet
    assert prepare_output(partial, run, True) == partial / CHECKPOINTS / "checkpoint-2"
    with pytest.raises(ConfigError, match="cannot resume .* other config, pairs"):
        prepare_output(partial, {**run, "pairs": "other", "config": {"seed": 1}}, True)


def test_summarize_scores_each_held_out_query_once() -> None:
    base = {"dense": {"a": 0.5, "b": 1.0, "c": 0.0}, "hybrid": {"a": 1.0, "b": 1.0, "c": 1.0}}
    folds = [(["a", "b"], {"dense": {"a": 1.0, "b": 1.0}, "hybrid": {"a": 1.0, "b": 0.5}}),
             (["c"], {"dense": {"c": 0.5}, "hybrid": {}})]
    s = summarize(base, folds)
    assert s["dense"]["base"] == pytest.approx(0.5) and s["dense"]["tuned"] == pytest.approx(2.5 / 3)
    assert s["dense"]["gain"] == pytest.approx(2.5 / 3 - 0.5)
    assert [f["gain"] for f in s["dense"]["per_fold"]] == pytest.approx([0.25, 0.5])
    assert s["dense"]["gain_std"] == pytest.approx(math.sqrt(2) * 0.125)
    assert s["hybrid"]["tuned"] == pytest.approx(0.5)  # c is missing from the fold: it counts 0
    assert [f["queries"] for f in s["hybrid"]["per_fold"]] == [2, 1]
    one = summarize(base, [(["a"], {"dense": {"a": 0.0}})])
    assert one["dense"]["gain_std"] == 0.0 and one["dense"]["gain"] == -0.5


def test_hard_negatives_skip_judged_and_near_positive_documents() -> None:
    passages = {d: f"passage {d}" for d in "abcdefg"}
    judged = {"q1": {"a", "b"}, "q2": {"c"}}
    pairs = [Pair("one", passages["a"], "q1", "a"), Pair("one", passages["b"], "q1", "b"),
             Pair("two", passages["c"], "q2", "c"), Pair("heading", "a section", "", "z", "headings")]
    cosines = {
        # q1: b is judged (never a negative); c scores above 0.95 x a's 0.8 = 0.76 (a likely unjudged answer)
        "q1": {"a": 0.80, "b": 0.85, "c": 0.78, "d": 0.70, "e": 0.70, "f": 0.10},
        # q2: the positive was not retrieved: the best unjudged document is the negative
        "q2": {"g": 0.50, "d": 0.40},
    }
    out, mined = with_hard_negatives(pairs, cosines, judged, passages)
    # for pair (q1, a): d and e tie at 0.70 -> by id, d; for (q1, b): cap 0.8075 lets c (0.78) in
    assert [p.negative for p in out] == ["passage d", "passage c", "passage g", ""]
    assert mined == 3
    assert [(p.anchor, p.positive, p.query_id) for p in out] == [(p.anchor, p.positive, p.query_id) for p in pairs]
    # only the depth best are candidates, and a negative whose passage is the positive's own text is skipped
    shallow, n = with_hard_negatives(pairs[:1], cosines, judged, passages, depth=3)
    assert n == 0 and shallow[0].negative == ""  # a, b, c: judged or above the cap
    same = dict(passages, d=passages["a"])
    assert with_hard_negatives(pairs[:1], cosines, judged, same)[0][0].negative == "passage e"
    # queries without a ranking, and empty inputs
    assert with_hard_negatives(pairs, {}, judged, passages) == (pairs, 0)
    assert with_hard_negatives([], cosines, judged, passages) == ([], 0)


def test_fill_negatives_gives_the_rest_a_seeded_other_passage() -> None:
    plain = [Pair("q", "p1", "q1", "d1"), Pair("h", "p2", "", "d2", "headings")]
    assert fill_negatives(plain) == plain  # nobody has one: no negative column at all
    pairs = [Pair("q", "p1", "q1", "d1", negative="n1"), Pair("h", "p2", "", "d2", "headings"),
             Pair("h2", "p3", "", "d3", "headings")]
    out = fill_negatives(pairs, seed=3)
    assert out[0] == pairs[0] and all(p.negative for p in out)
    assert all(p.negative != p.positive and p.negative in {"p1", "p2", "p3"} for p in out[1:])
    assert fill_negatives(pairs, seed=3) == out  # seeded
    # a second passage of the same document is not drawn as its negative
    same_doc = [Pair("q", "p1", "q1", "d1", negative="n1"), Pair("h", "p2", "", "d1", "headings")]
    assert fill_negatives(same_doc)[1].negative == ""


def test_dense_cosines_take_each_documents_best_chunk() -> None:
    class Hit:
        def __init__(self, doc_id: str, score: float) -> None:
            self.doc_id, self.score = doc_id, score

    class Response:
        dense = [Hit("a", 0.9), Hit("b", 0.75), Hit("a", 0.6), Hit("c", 0.0)]

    assert dense_cosines(Response()) == pytest.approx({"a": 0.8, "b": 0.5, "c": -1.0})


def _word_count(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


@pytest.mark.parametrize("template", ["{headings}\n\n{text}", "{title}\n{headings}\n\n{text}",
                                      "[{title}] {headings}: {text}"])
@pytest.mark.parametrize("size", [12, 400])
def test_heading_pairs_from_an_index_match_those_from_the_documents(template: str, size: int) -> None:
    """Chunked as ingest chunks them (small chunks: a section in several overlapping chunks), the stored
    chunks give back the same (heading, section) pairs as the documents."""
    body = "Words enough to make a passage worth training on, and then some more of them here."
    docs = [
        _markdown("a.md", f"# Guide\n\nIntro {body}\n\n## Install\n\nRun pip. {body} {body}\n\n"
                          f"### On Windows\n\nUse py. {body}\n\n## Tiny\n\nshort\n", title="Guide"),
        _markdown("b.md", f"## Usage\n\n{body}\n\n## Configure\n\nSet it. {body}\n"),
        Document("c.txt", "c", f"A plain note. {body}", title="Release notes"),
        Document("d.txt", "notes/d.txt", f"Another note. {body}", title="d", title_is_name=True),
    ]
    chunker = Chunker(_word_count, chunk_size=size, chunk_overlap=3)
    ctx = ContextTemplate(template)
    chunks = [c for d in docs for c in chunk_document(d, chunker, template=ctx)]
    assert len(chunks) > len(docs)
    expected = heading_pairs(docs)
    got = index_heading_pairs(reversed(chunks), ctx)  # the store's order is its own
    # the same passages, up to the whitespace between chunks (not stored)
    assert sorted((p.anchor, " ".join(p.positive.split()), p.doc_id) for p in expected) == \
        sorted((p.anchor, " ".join(p.positive.split()), p.doc_id) for p in got)
    assert {p.anchor for p in got} >= {"Guide", "Install", "On Windows", "Usage", "Release notes"}


@pytest.mark.parametrize("template", ["{headings}\n\n{text}", "{title}\n{headings}\n\n{text}",
                                      "{title}\n\n{text}", "Doc {title} / {headings}\n{text}", "{text}"])
def test_context_headings_read_back_from_every_prefix(template: str) -> None:
    ctx = ContextTemplate(template)
    for title in ("", "The title"):
        for path in ((), ("A",), ("A", "B c")):
            for prefix in [ctx.prefix(title, path), *ctx.shorter_prefixes(title, path)]:
                got = ctx.headings_in(prefix, title)
                if not prefix:
                    assert got == ()
                elif ctx.uses_headings:
                    assert got is not None and tuple(got) == tuple(path)[-len(got):] if got else True
                    if prefix == ctx.prefix(title, path):
                        assert got == path
    default = ContextTemplate("{headings}\n\n{text}")
    assert default.headings_in("no blank line after") is None
    # a heading holding the separator reads back as two
    assert default.headings_in(default.prefix("", ["Configure > options"])) == ("Configure", "options")
