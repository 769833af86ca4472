"""``esrag finetune`` end to end on the CPU: the packaged MiniLM fine-tuned for a few steps on a tiny BEIR
dataset, the model used with ``--model DIR``, the guard rails, and a run killed mid-training resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from esrag.cli import main
from esrag.quality.finetune import PROVENANCE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# (title, text, query): each query asks, in other words, for its one document
TOPICS = [
    ("Zebras", "Zebras have black and white stripes that confuse biting flies on the savanna.",
     "why are some horses striped"),
    ("Volcanoes", "A volcano erupts when magma pressure breaks through the crust as lava.",
     "what makes molten rock burst out of a mountain"),
    ("Baking bread", "Knead the dough, let the yeast rise overnight, then bake at high heat.",
     "how do I make a loaf at home"),
    ("Chess openings", "The Sicilian Defence answers the king pawn opening with a queen-side pawn.",
     "good reply for black to e4"),
    ("Python lists", "Append adds an element to the end of a Python list in amortised constant time.",
     "cost of adding an item to a list"),
    ("Tides", "Ocean tides follow the gravitational pull of the moon and, less, of the sun.",
     "why does the sea rise and fall twice a day"),
    ("Violins", "A violin has four strings tuned in fifths and is played with a horsehair bow.",
     "how is the smallest string instrument of an orchestra played"),
    ("Coffee", "Espresso forces hot water through finely ground coffee beans under pressure.",
     "how does a strong small cup of coffee get made"),
    ("Glaciers", "Glaciers carve U-shaped valleys as compacted ice slowly flows downhill.",
     "what shapes mountain valleys during ice ages"),
    ("Honey bees", "Worker bees dance to tell the hive where nectar-rich flowers grow.",
     "how do insects share where food is"),
    ("Rust ownership", "The Rust borrow checker enforces that each value has a single owner.",
     "memory safety without a garbage collector"),
    ("Marathons", "A marathon race covers 42.195 kilometres of road running.",
     "how long is the longest olympic road race"),
    ("Photosynthesis", "Chlorophyll in leaves turns sunlight, water and carbon dioxide into glucose.",
     "how plants make sugar"),
    ("Suspension bridges", "Suspension bridges hang the deck from steel cables slung over towers.",
     "what holds up the golden gate"),
    ("Green tea", "Green tea leaves are steamed or pan-fired to stop oxidation.",
     "why is some tea not black"),
    ("Comets", "A comet grows a glowing tail of gas and dust when it nears the sun.",
     "icy visitor with a bright tail in the night sky"),
    ("Origami", "Origami folds a single square sheet of paper into a crane without cutting.",
     "japanese paper folding"),
    ("Vaccines", "Vaccines train the immune system to recognise a pathogen's antigens.",
     "how do shots prevent disease"),
    ("Sourdough starter", "Feed the sourdough starter flour and water daily to keep wild yeast alive.",
     "keeping a bread culture going"),
    ("Lighthouses", "A lighthouse lamp rotates behind a Fresnel lens to warn ships of rocks.",
     "tower that guides boats at night"),
    ("Earthquakes", "Earthquakes happen when tectonic plates slip suddenly along a fault line.",
     "why does the ground shake"),
    ("Penguins", "Emperor penguins huddle together through the Antarctic winter to keep warm.",
     "birds that survive the south pole cold"),
    ("Solar panels", "Photovoltaic cells turn sunlight directly into electric current.",
     "making electricity from the sun"),
    ("Compilers", "A compiler translates source code into machine instructions before the program runs.",
     "turning code into an executable"),
]


def write_dataset(root: Path, extra_queries: dict[str, str] | None = None) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for i, (title, text, _) in enumerate(TOPICS):
            fh.write(json.dumps({"_id": f"d{i}", "title": title, "text": text}) + "\n")
    queries = {f"q{i}": q for i, (_, _, q) in enumerate(TOPICS)} | (extra_queries or {})
    with (root / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(len(TOPICS))]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


#: a few steps of a small model: batch 8, short texts, a high learning rate so the loss visibly falls
TRAIN = ["--train-batch-size", "8", "--max-seq-length", "48", "--lr", "1e-4", "--warmup", "0", "--device", "cpu",
         "--no-progress"]


@pytest.fixture
def cli() -> Callable[..., Any]:
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return run


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fine-tuning run with a before/after evaluation on held-out queries (SQLite): its JSON report,
    the model directory, the dataset and the store directory."""
    root = tmp_path_factory.mktemp("ft")
    data = write_dataset(root / "tiny")
    out = root / "model"
    store = root / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESRAG_")}
    env["ESRAG_CONFIG"] = str(root / "none.toml")
    (root / "none.toml").write_text("")
    result = CliRunner(env=env).invoke(main, [
        "finetune", "--qrels", str(data), "-o", str(out), "--heldout", "0.25", "--epochs", "3", *TRAIN,
        "--sqlite-dir", str(store), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    return {"report": report, "out": out, "data": data, "store": store}


def test_the_loss_falls_and_the_provenance_says_how_the_model_was_made(tuned: dict[str, Any]) -> None:
    losses = [loss for _, loss in tuned["report"]["training"]["losses"]]
    assert len(losses) >= 6
    assert np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2])
    prov = json.loads((tuned["out"] / PROVENANCE).read_text(encoding="utf-8"))
    assert prov["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert prov["params"]["batch_size"] == 8 and prov["params"]["loss"] == "mnrl"
    assert prov["params"]["learning_rate"] == 1e-4 and prov["params"]["epochs"] == 3
    assert prov["data"]["dataset"] == "tiny" and prov["data"]["pairs"] == ["qrels"]
    # judged pairs hold each document as the index embeds it (its first chunk, with the template's context)
    assert prov["data"]["passages"] == {"view": "first chunk, as embedded", "chunk_size": 256,
                                        "embed_template": "{headings}\n\n{text}"}
    assert prov["training"]["precision"] == "fp32" and prov["training"]["device"] == "cpu"
    assert prov["esrag_version"] and prov["created_at"]
    assert set(prov["evaluation"]["results"]) == {"dense", "hybrid"}
    assert not (tuned["out"] / "checkpoints").exists()


def test_held_out_queries_are_never_among_the_training_pairs(tuned: dict[str, Any]) -> None:
    data = tuned["report"]["data"]
    heldout, trained = set(data["heldout_queries"]), set(data["train_queries"])
    assert len(heldout) == 6 and len(trained) == 18
    assert not heldout & trained
    assert heldout | trained == {f"q{i}" for i in range(len(TOPICS))}
    assert data["n_pairs"] == 18  # one judged document per training query
    assert tuned["report"]["evaluation"]["heldout_queries"] == 6
    # the default mines a hard negative for each judged pair from the base model's ranking: on 24 documents,
    # each query's best unjudged one is far enough below its answer
    assert data["hard_negatives"] == {"mined": 18, "pairs": 18}


def test_no_hard_negatives_trains_on_the_pairs_alone(cli: Callable[..., Any], tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "tiny")
    r = cli("finetune", "--qrels", str(data), "-o", str(tmp_path / "m"), "--no-hard-negatives", "--max-steps", "1",
            *TRAIN, "--sqlite-dir", str(tmp_path / "s"), "--json")
    report = json.loads(r.stdout)
    assert "hard_negatives" not in report["data"] and report["training"]["steps"] == 1


def test_the_saved_model_ingests_and_searches_with_model_dir(tuned: dict[str, Any], cli: Callable[..., Any],
                                                              tmp_path: Path) -> None:
    out = str(tuned["out"])
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tides.md").write_text("# Tides\n\nOcean tides follow the pull of the moon.\n", encoding="utf-8")
    (docs / "bees.md").write_text("# Bees\n\nWorker bees dance to show where flowers are.\n", encoding="utf-8")
    where = ["--sqlite-dir", str(tmp_path / "s"), "--index", "ft", "--model", out, "--device", "cpu"]
    cli("ingest", str(docs), *where)
    status = json.loads(cli("status", "--json", *where[:4]).stdout)
    assert status["model"] == out
    hits = json.loads(cli("search", "why does the sea rise", "--json", *where).stdout)
    assert hits["hits"][0]["doc_id"].endswith("tides.md")
    # searching without --model embeds with the model the index records (the fine-tuned one) ...
    hits = json.loads(cli("search", "why does the sea rise", "--json", *where[:4], "--device", "cpu").stdout)
    assert hits["hits"][0]["doc_id"].endswith("tides.md")
    # ... and another model named on that index is refused, as for any model
    cli("search", "sea", *where[:4], "--model", "sentence-transformers/all-MiniLM-L6-v2", "--device", "cpu",
        code=1)


def test_the_tuned_vectors_differ_from_the_base_models(tuned: dict[str, Any], embedder: Any) -> None:
    from esrag.embedders.sentence_transformers import SentenceTransformerEmbedder

    model = SentenceTransformerEmbedder(str(tuned["out"]), device="cpu")
    texts = ["why does the sea rise and fall", "Worker bees dance to tell the hive where flowers grow."]
    base, new = embedder.embed_batch(texts), model.embed_batch(texts)
    assert base.shape == new.shape
    assert np.allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-4)
    assert float(np.max(np.abs(base - new))) > 1e-3


def test_eval_accepts_the_model_dir(tuned: dict[str, Any], cli: Callable[..., Any], tmp_path: Path) -> None:
    out = cli("eval", str(tuned["data"]), "--model", str(tuned["out"]), "--methods", "dense", "--json",
              "--sqlite-dir", str(tmp_path), "--device", "cpu", "--no-progress").stdout
    result = json.loads(out)
    assert result["params"]["model"] == str(tuned["out"])
    assert 0.0 <= result["results"]["dense"]["ndcg@10"] <= 1.0


def test_guard_rails_are_clear_errors(tuned: dict[str, Any], cli: Callable[..., Any], tmp_path: Path) -> None:
    data = str(tuned["data"])
    # an output directory that holds a model, or anything else
    r = cli("finetune", "--qrels", data, "-o", str(tuned["out"]), *TRAIN, code=2)
    assert "already holds a fine-tuned model" in r.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = cli("finetune", "--qrels", data, "-o", str(busy), *TRAIN, code=2)
    assert "exists and is not empty" in r.output
    # too few pairs for the batch
    r = cli("finetune", "--qrels", data, "-o", str(tmp_path / "a"), "--no-eval", "--train-batch-size", "64",
            "--device", "cpu", code=2)
    assert "too few training pairs: 24 distinct, fewer than one batch of 64" in r.output
    # the evaluated split trained on
    r = cli("finetune", "--qrels", data, "-o", str(tmp_path / "b"), "--train-split", "test", *TRAIN, code=2)
    assert "held-out split overlaps the training data" in r.output
    # heading pairs whose anchor is a held-out query, word for word
    leaky = write_dataset(tmp_path / "leaky", {"q0": "Zebras"})
    r = cli("finetune", "--qrels", str(leaky), "--pairs", "headings", "-o", str(tmp_path / "c"), *TRAIN,
            "--sqlite-dir", str(tmp_path / "s"), code=2)
    assert "held-out split overlaps the training data" in r.output and "'q0'" in r.output
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "tiny")
    out = tmp_path / "model"
    args = [sys.executable, "-m", "esrag.cli", "finetune", "--qrels", str(data), "-o", str(out), "--no-eval",
            "--max-steps", "6", "--save-steps", "2", *TRAIN]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ESRAG_")}, "PYTHONPATH": str(REPO),
           "ESRAG_CONFIG": str(tmp_path / "none.toml"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    (tmp_path / "none.toml").write_text("")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / PROVENANCE).exists()
    again = subprocess.run(args, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "interrupted fine-tuning run; pass --resume" in again.stderr
    other = subprocess.run([*args[:-len(TRAIN)], *TRAIN[:-1], "--seed", "1", "--resume"], env=env,
                           capture_output=True, text=True)
    assert other.returncode == 2 and "cannot resume" in other.stderr and "config" in other.stderr
    done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    prov = json.loads((out / PROVENANCE).read_text(encoding="utf-8"))
    assert prov["training"]["resumed_from"] >= 2
    assert prov["training"]["steps"] == 6
    assert "resumed from step" in done.stderr


def test_cross_validation_scores_every_query_once_then_trains_on_all(cli: Callable[..., Any],
                                                                   tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "tiny")
    out = tmp_path / "model"
    r = cli("finetune", "--qrels", str(data), "-o", str(out), "--cv", "2", "--max-steps", "2", *TRAIN,
            "--sqlite-dir", str(tmp_path / "s"), "--json")
    report = json.loads(r.stdout)
    results = report["evaluation"]["results"]
    for method in ("dense", "hybrid"):
        assert [f["queries"] for f in results[method]["per_fold"]] == [12, 12]
        assert results[method]["gain_std"] >= 0.0
        assert results[method]["gain"] == pytest.approx(np.mean([f["gain"] for f in results[method]["per_fold"]]))
    assert report["data"]["train_queries"] == sorted(f"q{i}" for i in range(len(TOPICS)))
    assert report["training"]["steps"] == 2
    prov = json.loads((out / PROVENANCE).read_text(encoding="utf-8"))
    assert prov["evaluation"]["cv"] == 2
    # the fold models and their indexes are gone: only the base model's evaluation index stays
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.suffix == ".db") == ["eval-tiny.db"]
    assert not list(tmp_path.glob("esrag-finetune-cv-*"))


def test_reindex_with_the_model_dir_deploys_it_behind_the_index_and_rolls_back(
        tuned: dict[str, Any], cli: Callable[..., Any], tmp_path: Path) -> None:
    """The loop's last step: `esrag reindex --model DIR` re-embeds the live index with the fine-tuned model and
    swaps it in (the index records the model's path and fingerprint); searches then embed with it, and
    `--rollback` goes back to the base model."""
    from esrag.config import Settings
    from esrag.embedders import fingerprint
    from esrag.engine import Engine

    docs = tmp_path / "docs"
    docs.mkdir()
    for i, (title, text, _) in enumerate(TOPICS):
        (docs / f"t{i}.md").write_text(f"# {title}\n\n## Summary\n\n{text}\n", encoding="utf-8")
    where = ["--sqlite-dir", str(tmp_path / "store"), "--index", "deployed"]
    cli("ingest", str(docs), "--no-progress", *where)
    model = str(tuned["out"].resolve())

    def live() -> tuple[str, str, list[dict[str, Any]]]:
        status = json.loads(cli("status", "--json", *where).stdout)
        settings = Settings(store="sqlite", sqlite_dir=str(tmp_path / "store"), index="deployed")
        with Engine(settings) as engine:
            meta = engine.store.read_meta()
        assert meta is not None
        return meta.model, meta.fingerprint, status["versions"]

    base_model, base_fp, _ = live()
    cli("reindex", "--model", model, *where)
    new_model, new_fp, versions = live()
    assert new_model == model and base_model != model
    assert [v["live"] for v in versions] == [False, True]
    settings = Settings(model=model, device="cpu")
    with Engine(settings) as engine:  # the fingerprint recorded is the fine-tuned model's own
        tuned_fp = fingerprint.compute(engine.embedder)
    assert fingerprint.same_model(new_fp, tuned_fp) and not fingerprint.same_model(new_fp, base_fp)
    hits = json.loads(cli("search", "why does the ground shake", "--json", "--mode", "dense", *where).stdout)["hits"]
    assert hits and hits[0]["title"] == "Earthquakes"  # embedded with the index's (fine-tuned) model
    cli("reindex", "--rollback", *where)
    assert live()[0] == base_model


def test_heading_pairs_come_from_the_chunks_of_an_index(cli: Callable[..., Any], tmp_path: Path) -> None:
    """No PATHS, no dataset: the pairs are read back from the index that `esrag ingest` built."""
    docs = tmp_path / "docs"
    docs.mkdir()
    sections = "".join(f"## {title}\n\n{text} {text}\n\n" for title, text, _ in TOPICS[:12])
    (docs / "guide.md").write_text(f"# Field guide\n\n{sections}", encoding="utf-8")
    store = ["--sqlite-dir", str(tmp_path / "s"), "--index", "kb"]
    cli("ingest", str(docs), *store, "--no-progress")
    r = cli("finetune", "--pairs", "headings", "-o", str(tmp_path / "m"), "--max-steps", "1", *TRAIN, *store,
            "--json")
    report = json.loads(r.stdout)
    assert report["data"]["heading_pairs"] == 12 and report["training"]["steps"] == 1
    assert report["data"]["heading_sources"] == ["index 'kb' (sqlite)"]
    missing = cli("finetune", "--pairs", "headings", "-o", str(tmp_path / "m2"), *TRAIN,
                  "--sqlite-dir", str(tmp_path / "s"), "--index", "nothing-here", code=1)
    assert "no index 'nothing-here'" in missing.output and not (tmp_path / "m2").exists()
