"""Citation-constrained decoding for local models: every sentence of the answer cites a source.

Large instruction-tuned models follow "cite as [n]"; small ones (the 135M default) mostly do not. For a
generator that decodes in-process, esrag can make citing part of the decoding instead of a request:

* while the current sentence has no ``[n]`` yet, the probability the model gives to ending it (a token ending
  in ``.``, ``!`` or ``?``, or end-of-text) is moved to the token that opens a citation (`` [``): where the
  model would end the sentence, it opens a citation instead;
* inside a citation it opened this way, only digits that spell a source number 1..n are allowed, then the
  closing ``]``. *Which* source is the model's own choice, by its probabilities over those numbers;
* a sentence still open when the token budget is nearly spent is cited before the budget runs out.

Everything else is left to the model, and a citation the model writes by itself counts as the sentence's
citation. This is the technique grammar-constrained decoding (llama.cpp grammars, vLLM guided decoding)
applies, reduced to what citations need. ``CitationRules`` holds the pure part (which tokens do what, the
state of a text) and is tested without a model; ``CitationLogitsProcessor`` applies it in
``transformers``' ``generate``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

#: a sentence end: . ! or ? at the end of a token's text (trailing whitespace aside)
_END_RE = re.compile(r"[.!?]\s*$")
#: the text of a closing token: "]" with at most one punctuation mark after it
_CLOSE_RE = re.compile(r"^\][.,;:!?]?$")
#: where the current sentence starts: after the last sentence end followed by whitespace
_SENTENCE_SPLIT_RE = re.compile(r"[.!?](?:\s+)|\n")
_CITED_RE = re.compile(r"\[\s*\d+(?:\s*[,;–-]\s*\d+)*\s*\]")
_OPEN_DIGITS_RE = re.compile(r"\[(\d*)$")
#: a "." after these is no sentence end: a number (3.14), a one-letter abbreviation (e.g.)
_NOT_AN_END_RE = re.compile(r"(?:\d|\b[A-Za-z])$")


class CitationRules:
    """Which tokens end sentences, open and close citations, or are digits, for one tokenizer's vocabulary
    (``texts[i]`` is token i decoded alone), and the citation state of a text."""

    def __init__(self, texts: Sequence[str], eos_ids: Sequence[int]) -> None:
        self.eos_ids = sorted({i for i in eos_ids if 0 <= i < len(texts)})
        self.end_ids = [i for i, t in enumerate(texts) if t.strip() and _END_RE.search(t)
                        and "[" not in t and "]" not in t]
        self.close_ids = [i for i, t in enumerate(texts) if _CLOSE_RE.match(t)]
        self.digit_ids = {i: t for i, t in enumerate(texts) if t.isascii() and t.isdigit()}
        spaced = [i for i, t in enumerate(texts) if t == " ["]
        bare = [i for i, t in enumerate(texts) if t == "["]
        if not bare and not spaced:
            raise ValueError("the tokenizer has no '[' token")
        self.open_spaced = spaced[0] if spaced else bare[0]
        self.open_bare = bare[0] if bare else spaced[0]
        if not self.close_ids or not self.digit_ids:
            raise ValueError("the tokenizer lacks ']' or digit tokens")

    @staticmethod
    def sentence_needs_citation(text: str) -> bool:
        """Whether the text's last sentence holds words but no citation yet."""
        parts = _SENTENCE_SPLIT_RE.split(text)
        current = parts[-1] if parts else ""
        return bool(re.search(r"\w", current)) and not _CITED_RE.search(current)

    def open_id(self, text: str) -> int:
        """The token that opens a citation after ``text``."""
        return self.open_bare if not text or text[-1].isspace() else self.open_spaced

    @staticmethod
    def number_prefixes(n_sources: int) -> set[str]:
        return {str(m)[:j] for m in range(1, n_sources + 1) for j in range(1, len(str(m)) + 1)}

    def inside(self, text: str, n_sources: int) -> tuple[list[int], bool] | None:
        """Inside an opened citation (``text`` ends with ``[`` and digits): the digit tokens that keep a valid
        source-number prefix, and whether closing is allowed now. None when ``text`` is not in one."""
        m = _OPEN_DIGITS_RE.search(text)
        if m is None:
            return None
        digits = m.group(1)
        prefixes = self.number_prefixes(n_sources)
        allowed = [i for i, t in self.digit_ids.items() if digits + t in prefixes]
        can_close = bool(digits) and 1 <= int(digits) <= n_sources
        return allowed, can_close

    def must_cite_now(self, text: str, tokens_left: int, n_sources: int) -> bool:
        """Whether an uncited sentence must open its citation now so that it fits in the tokens left:
        the opening token, the digits of the largest number, the closing token."""
        return tokens_left <= len(str(n_sources)) + 2 and self.sentence_needs_citation(text)

    def blocks_end(self, text: str) -> bool:
        """Whether ending the sentence after ``text`` is turned into opening a citation."""
        return self.sentence_needs_citation(text) and not _NOT_AN_END_RE.search(text.rstrip())


class CitationLogitsProcessor:
    """A ``transformers`` LogitsProcessor applying CitationRules to one ``generate`` call.

    ``decode`` turns the generated ids (after ``prompt_len``) into text; ``max_new_tokens`` bounds the
    answer. State lives in the token sequence itself, except for which ``[`` were opened by the constraint
    (those are the only ones whose contents are restricted): a bracket the model opens itself, say in code,
    is left alone.
    """

    def __init__(self, rules: CitationRules, n_sources: int, prompt_len: int, max_new_tokens: int,
                 decode: Any) -> None:
        self.rules = rules
        self.n_sources = n_sources
        self.prompt_len = prompt_len
        self.max_new_tokens = max_new_tokens
        self.decode = decode
        self._opened: set[tuple[int, int]] = set()  # (batch row, position of the forced "[")

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.n_sources <= 0:
            return scores
        neg = torch.finfo(scores.dtype).min
        for row in range(input_ids.shape[0]):
            ids = input_ids[row, self.prompt_len:].tolist()
            text = self.decode(ids)
            pos = len(ids)
            inside = self.rules.inside(text, self.n_sources) if self._open_forced(row, ids) else None
            if inside is not None:
                digits, can_close = inside
                keep = digits + (self.rules.close_ids if can_close else [])
                if keep:
                    mask = torch.full_like(scores[row], neg)
                    mask[keep] = scores[row, keep]
                    scores[row] = mask
                continue
            tokens_left = self.max_new_tokens - pos
            open_id = self.rules.open_id(text)
            if self.rules.must_cite_now(text, tokens_left, self.n_sources):
                scores[row] = torch.full_like(scores[row], neg)
                scores[row, open_id] = 0.0
                self._opened.add((row, pos))
            elif self.rules.blocks_end(text):
                moved = self.rules.end_ids + self.rules.eos_ids + [open_id]
                total = torch.logsumexp(scores[row, moved].float(), dim=0).to(scores.dtype)
                scores[row, moved] = neg
                scores[row, open_id] = total
                self._opened.add((row, pos))
        return scores

    def _open_forced(self, row: int, ids: list[int]) -> bool:
        """Whether the last ``[`` in the generated ids is one this processor offered (and the model took)."""
        for pos in range(len(ids) - 1, -1, -1):
            if ids[pos] in (self.rules.open_spaced, self.rules.open_bare):
                return (row, pos) in self._opened
            if ids[pos] not in self.rules.digit_ids:
                return False
        return False
