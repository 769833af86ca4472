"""Fine-tuning the embedding model on (query, passage) pairs with the sentence-transformers trainer.

Loss: MultipleNegativesRankingLoss (in-batch negatives: each anchor is scored against every positive of
its batch, its own is the target), or with ``mini_batch_size`` its cached variant (GradCache), which embeds
the batch in mini-batches without gradients, computes the loss over the whole batch, then replays the
mini-batches with the cached gradients: every anchor still sees every positive of the batch as a negative,
with the memory of one mini-batch. Plain gradient accumulation would not: each accumulated step is a
separate softmax over its own small batch, so the negatives per anchor stay those of the small batch.
Pairs that carry a hard negative (``Pair.negative``) train on (anchor, positive, negative) triplets: each
anchor is also scored against every negative of its batch, its own included.
The batch sampler leaves duplicate texts out of a batch (two copies of one passage would be each other's
false negative).

Precision: bf16 on a CUDA device that supports it, else fp16 on CUDA, fp32 on the CPU (``precision_for``).

The output directory: checkpoints are written to ``DIR/checkpoints/`` every ``save_steps`` steps, with
``DIR/checkpoints/run.json`` recording what is being trained; a killed run continues from its last
checkpoint with ``resume=True`` (the same data and parameters, else a ConfigError). At the end the model is
saved in ``DIR``, the checkpoints are removed and ``DIR/esrag-finetune.json`` (``PROVENANCE``) records how
the model was made; its presence marks a finished model. A directory that holds a finished model, an
interrupted run (without ``resume``) or anything else is refused.

This module imports neither the settings nor the stores nor the HTTP service: ``train`` needs only torch,
transformers, sentence-transformers, accelerate and datasets (scripts/gpu_check_finetune.py relies on it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esrag.errors import ConfigError, EmbeddingError, MissingDependencyError
from esrag.quality.finetune_pairs import Pair

log = logging.getLogger(__name__)

PROVENANCE = "esrag-finetune.json"
CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LOSSES = ("mnrl", "cached-mnrl")


@dataclass(frozen=True)
class TrainConfig:
    """What a fine-tuning run is made of. ``mini_batch_size`` > 0 selects the cached (GradCache) loss, whose
    memory is that of ``mini_batch_size`` while the in-batch negatives are those of ``batch_size``.
    ``warmup`` is the fraction of the steps over which the learning rate rises linearly from 0.
    ``max_steps`` > 0 stops after that many optimiser steps (overrides ``epochs``). ``precision`` is one of
    ``PRECISIONS``; ``device`` None picks CUDA when available."""

    base_model: str
    epochs: float = 1.0
    learning_rate: float = 2e-5
    warmup: float = 0.1
    batch_size: int = 32
    mini_batch_size: int = 0
    seed: int = 0
    max_seq_length: int = 256
    precision: str = "auto"
    device: str | None = None
    save_steps: int = 50
    max_steps: int = 0
    scale: float = 20.0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        checks = [
            (self.batch_size >= 2, f"the training batch size must be at least 2, got {self.batch_size}"),
            (0 <= self.mini_batch_size, f"the mini-batch size must be 0 (off) or more, got {self.mini_batch_size}"),
            (math.isfinite(self.epochs) and self.epochs > 0, f"epochs must be above 0, got {self.epochs}"),
            (math.isfinite(self.learning_rate) and 0 < self.learning_rate < 1,
             f"the learning rate must be in (0, 1), got {self.learning_rate}"),
            (math.isfinite(self.warmup) and 0 <= self.warmup < 1, f"warm-up must be in [0, 1), got {self.warmup}"),
            (8 <= self.max_seq_length <= 8192, f"max sequence length must be in [8, 8192], got {self.max_seq_length}"),
            (self.save_steps >= 1, f"save steps must be at least 1, got {self.save_steps}"),
            (self.max_steps >= 0, f"max steps must be 0 (off) or more, got {self.max_steps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def loss(self) -> str:
        return "cached-mnrl" if self.mini_batch_size else "mnrl"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss": self.loss}


@dataclass(frozen=True)
class TrainReport:
    """What a run did: optimiser steps, wall seconds of training, the training loss at each logged step
    (step, loss), the precision and device used, the step it resumed from (0: a fresh run)."""

    output: Path
    steps: int
    seconds: float
    losses: tuple[tuple[int, float], ...]
    precision: str
    device: str
    resumed_from: int = 0
    pairs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "steps": self.steps, "seconds": round(self.seconds, 3),
                "losses": [list(x) for x in self.losses], "precision": self.precision, "device": self.device,
                "resumed_from": self.resumed_from, "pairs": self.pairs}


def precision_for(device: str, asked: str, bf16_supported: bool) -> str:
    """The precision to train in: fp32 on anything but CUDA, whatever was asked (the CPU gains nothing from
    half precision and autocast there is slower); on CUDA, ``auto`` is bf16 where supported, else fp16;
    bf16 asked on a device without it is a ConfigError."""
    if asked not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {asked!r}")
    if not device.startswith("cuda"):
        return "fp32"
    if asked == "auto":
        return "bf16" if bf16_supported else "fp16"
    if asked == "bf16" and not bf16_supported:
        raise ConfigError(f"bf16 was asked for but {device} does not support it; use fp16 or auto")
    return asked


def pairs_fingerprint(pairs: Sequence[Pair]) -> str:
    """A hash of the training pairs in order (what a resumed run must train on again)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(p.anchor.encode("utf-8", "surrogatepass") + b"\x00" + p.positive.encode("utf-8", "surrogatepass")
                 + b"\x01")
        if p.negative:  # pairs without negatives hash as before: a run interrupted before they existed resumes
            h.update(p.negative.encode("utf-8", "surrogatepass") + b"\x02")
    return h.hexdigest()


def prepare_output(output: Path, run: dict[str, Any], resume: bool) -> Path | None:
    """Check ``output`` and return the checkpoint to resume from (None: start afresh).

    Refused (ConfigError): a directory holding a finished model (``PROVENANCE``); an interrupted run
    without ``resume``, or with ``resume`` but other data or parameters than ``run``; any other non-empty
    directory; a path that is a file."""
    check_output(output, resume)
    run_file = output / CHECKPOINTS / RUN_FILE
    if run_file.exists():
        try:
            recorded = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {run_file}: {e}") from e
        changed = sorted(k for k in set(recorded) | set(run) if recorded.get(k) != run.get(k))
        if changed:
            raise ConfigError(f"cannot resume {output}: the interrupted run had other {', '.join(changed)}; "
                              "use the same data and parameters, or another directory")
        return _last_checkpoint(output / CHECKPOINTS)
    return None


def check_output(output: Path, resume: bool) -> None:
    """The checks of ``prepare_output`` that need no run record, for a command to make before any slow
    work: a ConfigError for a file, a finished model, an interrupted run without ``resume``, or any other
    non-empty directory."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} exists and is not a directory")
    if (output / PROVENANCE).exists():
        raise ConfigError(f"output {output} already holds a fine-tuned model ({PROVENANCE}); choose another "
                          "directory or remove it")
    if (output / CHECKPOINTS / RUN_FILE).exists():
        if not resume:
            raise ConfigError(f"output {output} holds an interrupted fine-tuning run; pass --resume to continue "
                              "it, or remove the directory")
        return
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"output {output} exists and is not empty; choose a new directory")


def _last_checkpoint(folder: Path) -> Path | None:
    """The highest-numbered complete ``checkpoint-N`` (one with its trainer state: a checkpoint being
    written when the run was killed has none yet)."""
    done = []
    for d in folder.glob("checkpoint-*"):
        suffix = d.name.rpartition("-")[2]
        if suffix.isdigit() and (d / "trainer_state.json").is_file():
            done.append((int(suffix), d))
    return max(done)[1] if done else None


def _model_path(name: str) -> str:
    """A directory as it is; a name through the packaged-model lookup of the embedder."""
    if Path(name).is_dir():
        return name
    from esrag.embedders.sentence_transformers import resolve_model_path

    return resolve_model_path(name)


def _pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(
    pairs: Sequence[Pair],
    config: TrainConfig,
    output: str | Path,
    resume: bool = False,
    progress: bool = False,
    provenance: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Fine-tune ``config.base_model`` on ``pairs`` and save it to ``output`` (see the module docstring).

    ``provenance`` is merged into the JSON written beside the model (the data it was trained on).
    ``on_step(step, loss)`` is called at every optimiser step. Raises ConfigError for a refused output
    directory or too few pairs, MissingDependencyError without the finetune extra, EmbeddingError when the
    base model cannot be loaded."""
    from esrag.quality.finetune_pairs import check_enough, fill_negatives

    check_enough(pairs, config.batch_size)
    output = Path(output)
    run = {"pairs": pairs_fingerprint(pairs), "n_pairs": len(pairs), "config": config.to_dict()}
    checkpoint = prepare_output(output, run, resume)
    try:
        import datasets
        import torch
        from sentence_transformers import (
            SentenceTransformer,
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from transformers import PrinterCallback, TrainerCallback
    except ImportError as e:
        raise MissingDependencyError(e.name or "datasets", "finetune", "esrag finetune") from e
    try:  # sentence-transformers >= 6.1 moved these
        from sentence_transformers.base.sampler import BatchSamplers
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        from sentence_transformers import losses  # type: ignore[no-redef,attr-defined]
        from sentence_transformers.training_args import BatchSamplers  # type: ignore[no-redef]

    device = _pick_device(config.device)
    bf16_ok = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    precision = precision_for(device, config.precision, bf16_ok)
    path = _model_path(config.base_model)
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as e:  # OSError, HF errors, ValueError
        raise EmbeddingError(f"cannot load the base model {config.base_model!r} (from {path}): {e}") from e
    # Master weights in fp32 whatever the checkpoint holds: transformers loads a model saved in fp16 as fp16,
    # and mixed precision (autocast + gradient scaling) cannot unscale fp16 gradients (found on an H200 with
    # an fp16 copy of MiniLM: "Attempting to unscale FP16 gradients").
    model.float()
    model.max_seq_length = config.max_seq_length
    pairs = fill_negatives(pairs, config.seed)
    columns = {"anchor": [p.anchor for p in pairs], "positive": [p.positive for p in pairs]}
    if all(p.negative for p in pairs):  # (anchor, positive, negative): the loss adds each hard negative
        columns["negative"] = [p.negative for p in pairs]
    train_set = datasets.Dataset.from_dict(columns)
    loss: Any
    if config.mini_batch_size:
        loss = losses.CachedMultipleNegativesRankingLoss(model, scale=config.scale,
                                                         mini_batch_size=config.mini_batch_size)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, scale=config.scale)
    checkpoints = output / CHECKPOINTS
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / RUN_FILE).write_text(json.dumps(run, indent=2), encoding="utf-8")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup,
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not device.startswith("cuda"),
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        dataloader_drop_last=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to="none",
        disable_tqdm=not progress,
    )
    losses_seen: list[tuple[int, float]] = []

    class _Record(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses_seen.append((int(state.global_step), float(logs["loss"])))
                if on_step is not None:
                    on_step(int(state.global_step), float(logs["loss"]))

    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_set, loss=loss,
                                         callbacks=[_Record()])
    trainer.remove_callback(PrinterCallback)  # the loss of every step on stdout; the report holds them
    resumed_from = 0
    if checkpoint is not None:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        resumed_from = int(state.get("global_step", 0))
        log.info("resuming %s from %s (step %d)", output, checkpoint, resumed_from)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - t0
    extra: dict[str, Any] = {}
    if device.startswith("cuda"):
        extra["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    model.save(str(output))
    shutil.rmtree(checkpoints, ignore_errors=True)
    report = TrainReport(output, int(result.global_step), seconds, tuple(losses_seen), precision, device,
                         resumed_from, len(pairs), extra)
    write_provenance(output, {
        "base_model": config.base_model,
        "data": provenance or {},
        "params": config.to_dict(),
        "training": {k: v for k, v in report.to_dict().items() if k not in ("output", "losses")}
        | {"loss_first": losses_seen[0][1] if losses_seen else None,
           "loss_last": losses_seen[-1][1] if losses_seen else None, **extra},
    })
    return report


def write_provenance(output: Path, record: dict[str, Any]) -> Path:
    """Write (or update: keys merged, the new win) ``output/PROVENANCE``, atomically, with the esrag
    version and the time it was written."""
    from esrag import __version__

    target = output / PROVENANCE
    current: dict[str, Any] = {}
    if target.exists():
        current = json.loads(target.read_text(encoding="utf-8"))
    current.update(record)
    current.setdefault("esrag_version", __version__)
    current.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    current["format"] = 1
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, target)
    return target


def read_provenance(model_dir: str | Path) -> dict[str, Any] | None:
    """The provenance record of a fine-tuned model directory; None for any other model."""
    target = Path(model_dir) / PROVENANCE
    if not target.is_file():
        return None
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {target}: {e}") from e
    return data if isinstance(data, dict) else None
