"""``esrag eval`` and ``esrag tune`` end to end: a small BEIR-layout dataset, the real MiniLM, each store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from esrag.cli import main
from esrag.config import Settings

pytestmark = pytest.mark.integration

# Each document has its own vocabulary; each query uses the exact words of its only relevant document.
DOCS = {
    "zebra": ("Zebras", "Zebras have black and white stripes that confuse biting flies on the savanna."),
    "volcano": ("Volcanoes", "A volcano erupts when magma pressure breaks through the crust as lava."),
    "bread": ("Baking bread", "Knead the dough, let the yeast rise overnight, then bake at high heat."),
    "chess": ("Chess openings", "The Sicilian Defence answers the king pawn opening with a queen-side pawn."),
    "python": ("Python lists", "Append adds an element to the end of a Python list in amortised "
                               "constant time."),
    "tide": ("Tides", "Ocean tides follow the gravitational pull of the moon and, less, of the sun."),
    "violin": ("Violins", "A violin has four strings tuned in fifths and is played with a horsehair bow."),
    "coffee": ("Coffee", "Espresso forces hot water through finely ground coffee beans under pressure."),
    "glacier": ("Glaciers", "Glaciers carve U-shaped valleys as compacted ice slowly flows downhill."),
    "bee": ("Honey bees", "Worker bees dance to tell the hive where nectar-rich flowers grow."),
    "rust": ("Rust ownership", "The Rust borrow checker enforces that each value has a single owner."),
    "marathon": ("Marathons", "A marathon race covers 42.195 kilometres of road running."),
    "photosynthesis": ("Photosynthesis", "Chlorophyll in leaves turns sunlight, water and carbon dioxide "
                                         "into glucose and oxygen."),
    "bridge": ("Suspension bridges", "Suspension bridges hang the deck from steel cables slung over towers."),
    "tea": ("Green tea", "Green tea leaves are steamed or pan-fired to stop oxidation."),
    "comet": ("Comets", "A comet grows a glowing tail of gas and dust when it nears the sun."),
    "origami": ("Origami", "Origami folds a single square sheet of paper into a crane without cutting."),
    "vaccine": ("Vaccines", "Vaccines train the immune system to recognise a pathogen's antigens."),
    "sourdough": ("Sourdough starter", "Feed the sourdough starter flour and water daily to keep wild "
                                       "yeast and lactobacilli alive."),
    "lighthouse": ("Lighthouses", "A lighthouse lamp rotates behind a Fresnel lens to warn ships of rocks."),
}
QUERIES = {
    "q1": ("zebras black white stripes", "zebra"),
    "q2": ("borrow checker single owner", "rust"),
    "q3": ("lighthouse Fresnel lens ships", "lighthouse"),
    "q4": ("glaciers carve valleys", "glacier"),
    "q5": ("origami crane square sheet", "origami"),
}


def write_dataset(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id, (title, text) in DOCS.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, (text, _) in QUERIES.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, (_, d) in QUERIES.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def store_args(settings: Settings) -> list[str]:
    args = ["--store", settings.store_name, "--index", settings.index, "--device", "cpu"]
    if settings.store_name == "elasticsearch":
        args += ["--es-url", str(settings.es_url)]
    else:
        args += ["--sqlite-dir", settings.sqlite_dir]
    return args


@pytest.fixture
def cli() -> Callable[..., Any]:
    """Run the CLI in this process (the embedder plugin keeps one loaded MiniLM per configuration)."""
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return run


def test_eval_reports_every_method_and_reuses_the_index(
    tmp_path: Path, store_settings: Callable[..., Settings], cli: Callable[..., Any]
) -> None:
    data = write_dataset(tmp_path / "tiny-beir")
    settings = store_settings()
    runs = tmp_path / "runs"
    result = cli("eval", str(data), "--json", "--runs", str(runs), *store_args(settings))
    out = json.loads(result.stdout)
    assert out["dataset"] == "tiny-beir"
    assert out["store"] == settings.store_name
    assert set(out["results"]) == {"tfidf", "bm25", "dense", "hybrid", "rrf"}
    for method, metrics in out["results"].items():
        assert set(metrics) == {"ndcg@10", "mrr@10", "recall@100"}, method
        assert all(0.0 <= v <= 1.0 for v in metrics.values()), (method, metrics)
        assert metrics["recall@100"] == 1.0, method  # 20 documents: everything is within 100
    # every query's only relevant document holds its exact words
    assert out["results"]["bm25"]["mrr@10"] == 1.0
    assert out["results"]["tfidf"]["mrr@10"] == 1.0
    assert out["results"]["dense"]["ndcg@10"] > 0.5
    assert out["results"]["hybrid"]["ndcg@10"] > 0.5
    assert out["ingest"]["documents_new"] == len(DOCS)
    assert out["params"]["doc_weight"] == settings.doc_weight

    # TREC run files: "qid Q0 docid rank score tag", ranks 1..n, scores non-increasing
    assert sorted(p.name for p in runs.iterdir()) == sorted(f"{m}.trec" for m in out["results"])
    lines = (runs / "bm25.trec").read_text().splitlines()
    by_query: dict[str, list[tuple[str, int, float]]] = {}
    for line in lines:
        qid, q0, doc, rank, score, tag = line.split(" ")
        assert q0 == "Q0" and tag == "esrag-bm25" and doc in DOCS
        by_query.setdefault(qid, []).append((doc, int(rank), float(score)))
    assert set(by_query) == set(QUERIES)
    for qid, rows in by_query.items():
        assert [r for _, r, _ in rows] == list(range(1, len(rows) + 1))
        assert all(a[2] >= b[2] for a, b in zip(rows, rows[1:], strict=False))
        assert rows[0][0] == QUERIES[qid][1]

    again = json.loads(cli("eval", str(data), "--json", "--methods", "bm25,hybrid",
                           *store_args(settings)).stdout)
    assert again["ingest"]["documents_unchanged"] == len(DOCS)
    assert again["ingest"]["chunks_embedded"] == 0
    assert set(again["results"]) == {"bm25", "hybrid"}
    assert again["results"]["bm25"] == out["results"]["bm25"]

    unweighted = json.loads(cli("eval", str(data), "--json", "--methods", "bm25", "--doc-weight", "0",
                                *store_args(settings)).stdout)
    assert unweighted["params"]["doc_weight"] == 0.0
    table = cli("eval", str(data), "--methods", "bm25", *store_args(settings)).stdout
    assert "nDCG@10" in table and "bm25" in table


def test_tune_plots_and_saves_the_best_setting(
    tmp_path: Path, store_settings: Callable[..., Settings], cli: Callable[..., Any]
) -> None:
    data = write_dataset(tmp_path / "tiny-beir")
    settings = store_settings()
    plot = tmp_path / "curve.png"
    result = cli("tune", str(data), "--json", "--step", "0.5", "--folds", "5", "--plot", str(plot), "--save",
                 "--doc-weights", "0,0.5", *store_args(settings))
    out = json.loads(result.stdout)
    assert len(out["curve"]) == 2 * (3 * 3 + 6)
    assert {p["doc_weight"] for p in out["curve"]} == {0.0, 0.5}
    assert len(out["cv"]["per_fold"]) == 5
    assert 0.0 <= out["cv"]["heldout_ndcg@10"] <= 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = Path(out["saved"])
    saved = tomllib.loads(config.read_text())
    best = out["best"]
    assert saved["fusion"] == best["fusion"] and saved["alpha"] == best["alpha"]
    assert saved["doc_weight"] == best["doc_weight"]
    assert Settings.load(config_file=config).fusion == best["fusion"]


def test_a_missing_eval_dependency_is_named_before_anything_is_indexed(tmp_path: Path) -> None:
    """ranx made unimportable in a fresh process (as if not installed): the error names the extra and a
    command that works from a clone, and no store is created."""
    data = write_dataset(tmp_path / "tiny-beir")
    code = ("import sys; sys.modules['ranx'] = None; from esrag.cli import main; "
            "main(['eval', sys.argv[1], '--sqlite-dir', sys.argv[2], '--device', 'cpu'])")
    done = subprocess.run([sys.executable, "-c", code, str(data), str(tmp_path / "store")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert done.returncode != 0
    assert "needs the 'ranx' package" in done.stderr and "pip install -e '.[eval]'" in done.stderr, done.stderr
    assert "Indexing" not in done.stderr
    assert not (tmp_path / "store").exists()
