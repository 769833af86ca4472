"""The CUDA paths of ``esrag finetune``: a short fine-tune in bf16, fp16 and fp32 (and the cached loss in
bf16 at a 4x larger batch), each timed per step and measured for peak GPU memory; one JSON object out.

Needs only torch (CUDA), transformers, sentence-transformers, accelerate and datasets, with esrag on
PYTHONPATH: it imports esrag.quality.finetune alone (no settings, stores or HTTP service). The pairs are synthetic
(no data set needed); the model is a local sentence-transformers directory.

    PYTHONPATH=. python scripts/gpu_check_finetune.py /path/to/all-MiniLM-L6-v2 --steps 30
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from esrag.quality.finetune import TrainConfig, train
from esrag.quality.finetune_pairs import Pair

WORDS = ("index shard replica query vector token chunk model embed search answer source cluster node alias "
         "mapping analyzer score fusion batch gradient precision memory device kernel cache window").split()


def synthetic_pairs(n: int, passage_words: int, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = " ".join(rng.choices(WORDS, k=4))
        body = " ".join(rng.choices(WORDS, k=passage_words))
        out.append(Pair(f"how does {topic} work {i}", f"{topic} {i}: {body}", f"q{i}"))
    return out


def run_one(model: str, precision: str, batch: int, mini: int, steps: int, seq: int, root: Path,
            device: str = "cuda") -> dict[str, Any]:
    pairs = synthetic_pairs(batch * (steps + 1), passage_words=seq, seed=1)
    stamps: list[float] = []
    config = TrainConfig(base_model=model, batch_size=batch, mini_batch_size=mini, max_steps=steps,
                         max_seq_length=seq, precision=precision, device=device, save_steps=10**6,
                         learning_rate=2e-5, warmup=0.1)
    out = root / f"{precision}-{batch}-{mini}"
    report = train(pairs, config, out, on_step=lambda step, loss: stamps.append(time.perf_counter()))
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][2:]  # the first steps warm up
    losses = [loss for _, loss in report.losses]
    return {
        "precision": report.precision, "loss": config.loss, "batch": batch, "mini_batch": mini, "steps": report.steps,
        "seconds_per_step": statistics.median(intervals) if intervals else report.seconds / max(report.steps, 1),
        "train_seconds": round(report.seconds, 2),
        "peak_memory_mib": round(report.extra.get("peak_memory_bytes", 0) / 2**20, 1),
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a local sentence-transformers model directory")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=256, help="max sequence length")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (every run in fp32)")
    args = p.parse_args()
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device")
    runs = [("bf16", args.batch, 0), ("fp16", args.batch, 0), ("fp32", args.batch, 0),
            ("bf16", 4 * args.batch, args.batch)]
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-finetune-") as tmp:
        for precision, batch, mini in runs:
            if cuda and precision == "bf16" and not torch.cuda.is_bf16_supported():
                results.append({"precision": "bf16", "skipped": "not supported by this device"})
                continue
            results.append(run_one(args.model, precision, batch, mini, args.steps, args.seq, Path(tmp),
                                   args.device))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    fp32 = next((r for r in results if r.get("precision") == "fp32"), None)
    if fp32:
        for r in results:
            if "seconds_per_step" in r:
                r["time_vs_fp32"] = round(r["seconds_per_step"] / fp32["seconds_per_step"], 3)
                r["memory_vs_fp32"] = round(r["peak_memory_mib"] / max(fp32["peak_memory_mib"], 1e-9), 3)
    print(json.dumps({"device": torch.cuda.get_device_name(0) if cuda else args.device, "torch": torch.__version__,
                      "runs": results}, indent=2))


if __name__ == "__main__":
    main()
