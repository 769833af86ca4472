"""Benchmark answer quality on the judged set about esrag's own docs (tests/data/answers/docs_questions.json).

Ingests docs/ into a fresh embedded store (MiniLM, CPU) and asks every question with each generator:

- ``extractive`` (no LLM), ``transformers_local`` (SmolLM2-135M in-process), ``openai_compat`` (the same
  GGUF behind a llama.cpp server started here, unless --llm-url is given).

Per generator it reports:

- ``cites_answering``: share of questions whose citations include an answering passage (a cited chunk from
  the judged doc that contains the judged substring); ``retrieved_answering``, the same for the passages
  given to the generator, is the ceiling retrieval allows;
- ``key_facts``: share of answers containing every key fact;
- ``supported``: share of cited sentences that the passage they cite supports (esrag.answering.checks);
- ``repeated``: share of sentences that repeat an earlier sentence of the same answer; ``cut``: answers cut
  for looping;
- median and p95 of time to first token and total time (retrieval + generation, model load excluded), and
  the model load time.

Usage::

    HF_HUB_OFFLINE=1 python scripts/bench_answers.py                         # all generators, all questions
    python scripts/bench_answers.py --generators extractive,transformers_local --llm-limit 8

``--llm-limit N`` asks the LLM generators only the first N questions (on 2 shared cores the full set takes
long). Prints a table, then one JSON object (also written to --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
JUDGED = ROOT / "tests" / "data" / "answers" / "docs_questions.json"
GENERATORS = ("extractive", "transformers_local", "openai_compat")


def squash(text: str) -> str:
    return " ".join(text.split()).lower()


def answering(passage: Any, judged: dict[str, Any]) -> bool:
    """Whether a Passage (or Hit) is one of the judged question's answering passages."""
    hit = getattr(passage, "hit", passage)
    return any(hit.source.replace("\\", "/").endswith(a["doc"]) and squash(a["contains"]) in squash(hit.text)
               for a in judged["answers"])


def score_answer(answer: Any, judged: dict[str, Any]) -> dict[str, Any]:
    from esrag.answering.checks import repeated_sentences, split_sentences

    by_n = {p.n: p for p in answer.passages}
    cited = [by_n[c.n] for c in answer.citations if c.n in by_n]
    text = answer.text.lower()
    cited_checks = [s for s in answer.sentences if s.cites]
    return {
        "id": judged["id"],
        "cites_answering": any(answering(p, judged) for p in cited),
        "retrieved_answering": any(answering(p, judged) for p in answer.passages),
        "key_facts": all(any(alt.lower() in text for alt in fact) for fact in judged["facts"]),
        "cited_sentences": len(cited_checks),
        "supported_sentences": sum(s.supported for s in cited_checks),
        "sentences": len(split_sentences(answer.text)),
        "repeated": repeated_sentences(answer.text),
        "cut": answer.cut is not None,
        "ttft_ms": answer.timings.ttft_ms,
        "total_ms": answer.timings.total_ms,
        "answer": answer.text,
    }


def pct(values: list[float], q: float) -> float | None:
    from esrag.stats import percentile

    return percentile(values, q) if values else None


def summarize(rows: list[dict[str, Any]], load_s: float) -> dict[str, Any]:
    n = len(rows)
    cited = sum(r["cited_sentences"] for r in rows)
    sentences = sum(r["sentences"] for r in rows)
    ttft = [r["ttft_ms"] for r in rows if r["ttft_ms"] is not None]
    total = [r["total_ms"] for r in rows]
    return {
        "questions": n,
        "cites_answering": sum(r["cites_answering"] for r in rows) / n,
        "retrieved_answering": sum(r["retrieved_answering"] for r in rows) / n,
        "key_facts": sum(r["key_facts"] for r in rows) / n,
        "supported": sum(r["supported_sentences"] for r in rows) / cited if cited else None,
        "cited_sentences": cited,
        "repeated": sum(r["repeated"] for r in rows) / sentences if sentences else 0.0,
        "cut": sum(r["cut"] for r in rows),
        "ttft_ms_p50": pct(ttft, 50), "ttft_ms_p95": pct(ttft, 95),
        "total_ms_p50": pct(total, 50), "total_ms_p95": pct(total, 95),
        "load_s": load_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generators", default=",".join(GENERATORS), help="comma-separated, from "
                        f"{', '.join(GENERATORS)}")
    parser.add_argument("--llm-limit", type=int, default=None, metavar="N",
                        help="ask the LLM generators only the first N questions")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--llm-url", help="an already running OpenAI-compatible server for openai_compat")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 avoids oversubscription on small shared machines)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the index and the answers, e.g. analyzer=english (repeatable)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    names = [g.strip() for g in args.generators.split(",") if g.strip()]
    unknown = set(names) - set(GENERATORS)
    if unknown:
        parser.error(f"unknown generator(s): {', '.join(sorted(unknown))}")
    judged = json.loads(JUDGED.read_text(encoding="utf-8"))["questions"]

    from esrag.config import Settings
    from esrag.engine import Engine

    workdir = Path(tempfile.mkdtemp(prefix="esrag-bench-answers-"))
    server = None
    results: dict[str, Any] = {}
    per_question: dict[str, list[dict[str, Any]]] = {}
    try:
        base = dict(store="sqlite", sqlite_dir=str(workdir / "store"), index="answers", device="cpu",
                    max_new_tokens=args.max_new_tokens, cache_dir=str(workdir / "cache")
                    if os.environ.get("ESRAG_BENCH_COLD") else None)
        base.update(kv.split("=", 1) for kv in args.setting)
        t0 = time.perf_counter()
        with Engine(Settings(**{k: v for k, v in base.items() if v is not None})) as engine:
            report = engine.ingest_paths([ROOT / "docs"])
        print(f"ingested docs/: {report.to_dict() if hasattr(report, 'to_dict') else report} "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for name in names:
            extra: dict[str, Any] = {}
            questions = judged if name == "extractive" or args.llm_limit is None else judged[: args.llm_limit]
            if name == "openai_compat":
                url = args.llm_url
                if url is None:
                    sys.path.insert(0, str(ROOT / "scripts"))
                    from bench_ask import start_server

                    server, url, _ = start_server(workdir)
                extra["llm_url"] = url
            settings = Settings(**{k: v for k, v in {**base, **extra}.items() if v is not None})
            with Engine(settings) as engine:
                t0 = time.perf_counter()
                engine.generator(name)
                load_s = time.perf_counter() - t0
                engine.ask(judged[0]["question"], generator=name)  # warm-up: first-call costs excluded
                rows = []
                for i, q in enumerate(questions, 1):
                    answer = engine.ask(q["question"], generator=name)
                    rows.append(score_answer(answer, q))
                    print(f"  {name} {i}/{len(questions)} {q['id']}: {rows[-1]['total_ms'] / 1e3:.1f} s",
                          file=sys.stderr)
            results[name] = summarize(rows, load_s)
            per_question[name] = rows
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)

    cols = ["questions", "cites_answering", "retrieved_answering", "key_facts", "supported", "repeated", "cut",
            "ttft_ms_p50", "total_ms_p50", "total_ms_p95", "load_s"]
    print("generator".ljust(20) + "".join(c.rjust(20) for c in cols))
    for name, r in results.items():
        cells = [("-" if r[c] is None else f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
        print(name.ljust(20) + "".join(c.rjust(20) for c in cells))
    out = {"judged_set": str(JUDGED.relative_to(ROOT)), "max_new_tokens": args.max_new_tokens,
           "settings": dict(kv.split("=", 1) for kv in args.setting),
           "results": results, "per_question": per_question}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
