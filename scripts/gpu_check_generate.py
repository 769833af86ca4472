"""Check the in-process generator's CUDA paths (4-bit NF4 and bf16) on a GPU, and print figures as JSON.

Not a test: CI has no GPU. Run it on a CUDA machine with esrag on ``PYTHONPATH`` and torch, transformers,
bitsandbytes and pydantic installed::

    python scripts/gpu_check_generate.py --tokenizer DIR [--shapes smollm2,mistral-7b] [--tokens 128]

``--tokenizer DIR`` holds a chat tokenizer (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``)
and the ``config.json`` of SmolLM2-135M-Instruct, e.g. the directory esrag's first GGUF load writes under
``~/.cache/esrag/models/`` minus the weights. The weights are random (no hub here): the figures are of the
architecture (load time, GPU memory, decode tokens/s through ``TransformersLocalGenerator``), not of answer
quality. ``mistral-7b`` is Zephyr-7B-beta's architecture (Mistral 7B) with the tokenizer's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = ("Sources:\n[1] The alias moves in one atomic _aliases call, so searches never see a missing index.\n\n"
          "Question: how does esrag swap indices?")


def build_model(shape: str, tokenizer_dir: Path, target: Path, device: str) -> None:
    """Save a randomly initialised model of ``shape`` with the tokenizer of ``tokenizer_dir`` into ``target``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig

    base = AutoConfig.from_pretrained(tokenizer_dir)
    if shape == "smollm2":
        config = base
    elif shape == "mistral-7b":
        config = MistralConfig(vocab_size=base.vocab_size, hidden_size=4096, intermediate_size=14336,
                               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                               max_position_embeddings=32768, bos_token_id=base.bos_token_id,
                               eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id)
    else:
        raise SystemExit(f"unknown shape {shape!r}")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if target.exists():
        shutil.rmtree(target)
    model.save_pretrained(target)
    del model
    _cuda(torch, "empty_cache")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                 "generation_config.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, target / name)


def _cuda(torch: Any, call: str) -> Any:
    """``torch.cuda.<call>()`` where CUDA is present (the script also runs on a CPU, as a smoke test)."""
    return getattr(torch.cuda, call)() if torch.cuda.is_available() else 0


def measure(model_dir: Path, quantize: str, tokens: int, device: str) -> dict[str, Any]:
    """Load ``model_dir`` through esrag's generator with ``quantize`` and time one generate and one stream."""
    import torch

    from esrag.config import Settings
    from esrag.generators.base import Message
    from esrag.generators.transformers_local import TransformersLocalGenerator

    _cuda(torch, "empty_cache")
    _cuda(torch, "reset_peak_memory_stats")
    settings = Settings(llm_model=str(model_dir), quantize=quantize, device=device, max_new_tokens=tokens,
                        temperature=0.0, no_repeat_ngram_size=0, repetition_penalty=1.0)
    gen = TransformersLocalGenerator(settings)
    loaded = _cuda(torch, "memory_allocated")
    messages = [Message(role="user", content=PROMPT)]
    gen.generate(messages)  # warm-up
    _cuda(torch, "synchronize")
    started = time.perf_counter()
    gen.generate(messages)
    _cuda(torch, "synchronize")
    seconds = time.perf_counter() - started
    produced = gen.last_completion_tokens or 0
    started = time.perf_counter()
    pieces = list(gen.stream(messages, sources=1))
    stream_seconds = time.perf_counter() - started
    result = {
        "quantize": gen.quantize, "compute_dtype": gen.dtype, "device": gen.device,
        "load_s": round(gen.load_seconds, 2),
        "weights_gib": round(loaded / 2**30, 3),
        "peak_gib": round(_cuda(torch, "max_memory_allocated") / 2**30, 3),
        "new_tokens": produced, "decode_tok_per_s": round(produced / seconds, 1) if seconds else None,
        "stream_pieces_cited": len(pieces), "stream_s": round(stream_seconds, 2),
    }
    gen.close()
    del gen
    _cuda(torch, "empty_cache")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--shapes", default="smollm2,mistral-7b")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (quantize none only)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "esrag-gpu-models")
    args = parser.parse_args()
    import torch

    cuda = args.device.startswith("cuda")
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0) if cuda else "none", "torch": torch.__version__,
                              "bf16": torch.cuda.is_bf16_supported() if cuda else None}
    for shape in args.shapes.split(","):
        target = args.work / shape
        started = time.perf_counter()
        build_model(shape, args.tokenizer, target, args.device)
        report[shape] = {"build_s": round(time.perf_counter() - started, 1)}
        for quantize in ("4bit", "none") if cuda else ("none",):
            try:
                report[shape][quantize] = measure(target, quantize, args.tokens, args.device)
            except Exception as e:  # report and go on: the other precision may still work
                report[shape][quantize] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(json.dumps({shape: report[shape]}), flush=True)
        shutil.rmtree(target, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
