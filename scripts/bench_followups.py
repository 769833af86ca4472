"""What a chat should retrieve for its second question: the rule of esrag.answering.conversation, measured.

Ingests esrag's own ``docs/`` (the packaged MiniLM, the embedded store) and runs the two-turn conversations
of ``tests/data/answers/followups.json``: follow-ups, whose second question needs the first, and topic
switches, whose second question stands alone. For each, it retrieves ``--k`` passages (the default
``rag_k``) for the second question built several ways and counts the conversations with an answering
passage among them (a passage from the judged doc containing the judged text), and the mean reciprocal rank
of the first one:

- ``question``: the second question alone (what the chat route did before);
- ``always``: the previous user question then the question;
- ``rule``: esrag.answering.conversation's rule, the same when the question refers back (``refers_back``), else the
  question alone;
- ``rule+answer``: the previous question, the extractive answer given to it, then the question;
- ``llm`` (with ``--llm-url``): the question rewritten by that OpenAI-compatible server.

    python scripts/bench_followups.py
    python scripts/bench_followups.py --llm-url http://127.0.0.1:8080/v1

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SET = ROOT / "tests" / "data" / "answers" / "followups.json"


def squash(text: str) -> str:
    return " ".join(text.split()).lower()


def first_answering(hits: list[Any], answers: list[dict[str, str]]) -> int | None:
    """The 1-based rank of the first hit that answers, None when none does."""
    for rank, hit in enumerate(hits, 1):
        if any(hit.source.replace("\\", "/").endswith(a["doc"]) and squash(a["contains"]) in squash(hit.text)
               for a in answers):
            return rank
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=5, help="passages retrieved (the default rag_k)")
    ap.add_argument("--llm-url", help="also measure the rewrite by this OpenAI-compatible server")
    ap.add_argument("--workdir", type=Path, help="keep the store here (a rerun re-ingests nothing)")
    args = ap.parse_args()

    from esrag.answering.conversation import refers_back, standalone_question, with_previous_questions
    from esrag.config import Settings
    from esrag.engine import Engine
    from esrag.generators.base import Message

    conversations = json.loads(SET.read_text())["conversations"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="esrag-followups-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "esrag.toml").write_text("")
    os.environ["ESRAG_CONFIG"] = str(work / "esrag.toml")
    settings = Settings(store="sqlite", sqlite_dir=str(work / "db"), index="docs", device="cpu",
                        generator="extractive", llm_url=args.llm_url)
    rows: list[dict[str, Any]] = []
    with Engine(settings) as engine:
        report = engine.ingest_paths([ROOT / "docs"])
        assert report.ok, report
        llm = engine.generator("openai_compat") if args.llm_url else None
        for conv in conversations:
            first, second = conv["turns"]
            said = engine.ask(first).text
            history = [Message("user", first), Message("assistant", said)]
            always = with_previous_questions(second, history)
            queries = {"question": second, "always": always, "rule": always if refers_back(second) else second,
                       "rule+answer": f"{first}\n{said}\n{second}"}
            if llm is not None:
                asked = standalone_question(second, history, llm)
                queries["llm"] = asked.text
            row: dict[str, Any] = {"kind": conv["kind"], "turns": conv["turns"]}
            for name, query in queries.items():
                row[name] = first_answering(engine.search(query, k=args.k).hits, conv["answers"])
            if llm is not None:
                row["llm_query"] = queries["llm"]
            rows.append(row)

    names = ["question", "always", "rule", "rule+answer"] + (["llm"] if args.llm_url else [])
    summary: dict[str, Any] = {}
    for kind in ("follow-up", "switch"):
        mine = [r for r in rows if r["kind"] == kind]
        summary[kind] = {name: {"answered": sum(r[name] is not None for r in mine), "of": len(mine),
                                "mrr": round(sum(1 / r[name] for r in mine if r[name]) / len(mine), 3)}
                         for name in names}
    print(f"{'':12}" + "".join(f"{n:>16}" for n in names))
    for kind, by_name in summary.items():
        print(f"{kind:12}" + "".join(f"{s['answered']:>4}/{s['of']:<3} {s['mrr']:>6.3f}  " for s in by_name.values()))
    for r in rows:
        print(r["kind"], r["turns"][1], {n: r[n] for n in names}, r.get("llm_query", ""))
    print(json.dumps({"k": args.k, "summary": summary}))


if __name__ == "__main__":
    main()
