"""Citation-constrained decoding for local models: every sentence of the answer cites a source.

Large instruction-tuned models follow "cite as [n]"; small ones (the 135M default) mostly do not. For a
generator that decodes in-process, esrag can make citing part of the decoding instead of a request:

* when the model has written a sentence with no ``[n]`` in it and ends it (``.``, ``!`` or ``?``, then the
  model's next token starts with whitespace, or is the end of text), the probability it gives to that next
  token moves to ``[``: the citation goes right after the sentence, Wikipedia style (``...blue.[2] Next``);
  the probability of tokens that continue without a space (``corpus.jsonl``, ``3.14``) is left alone, so the
  model's own choice between "sentence end" and "not one" decides. A single token holding both the
  punctuation and the whitespace (``".\n"``) is steered to the bare punctuation first;
* the end of text after an uncited sentence without final punctuation opens `` [`` instead;
* inside a citation opened this way, only digits that spell a source number 1..n are allowed, then ``]``.
  *Which* source is the model's own choice, by its probabilities over those numbers;
* a sentence still uncited when the token budget is nearly spent is cited before the budget runs out;
* given the passages' texts, a citation is forced only onto a sentence that one of them supports
  (``esrag.answering.checks.support``), and only the numbers of the passages that support it are allowed: the
  constraint never makes an invented claim look sourced. A sentence no passage supports is left uncited.

Everything else is left to the model, and a citation the model writes by itself counts as the sentence's
citation. This is what grammar-constrained decoding (llama.cpp grammars, vLLM guided decoding) does, reduced
to what citations need. ``CitationRules`` holds the pure part (which tokens do what, the state of a text)
and is tested without a model; ``CitationLogitsProcessor`` applies it in ``transformers``' ``generate``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from esrag.answering.checks import CITATION, CITATION_RE, DEFAULT_SUPPORT_THRESHOLD, supporters

#: a sentence boundary: . ! or ? (optionally followed by citations) then whitespace; or a line break
_SENTENCE_SPLIT_RE = re.compile(rf"[.!?](?:{CITATION})*\s+|\n")
_OPEN_DIGITS_RE = re.compile(r"\[(\d*)$")
#: text ending a sentence: a word, then . ! or ?
_ENDED_RE = re.compile(r"\w[)\"'”’]*[.!?][)\"'”’]*$")
#: ... unless the word is a number (a list marker "1.", "3.14"; not "BM25."), one letter or dotted ("e.g.")
_NOT_AN_END_RE = re.compile(r"(?:\b\d+|\b\w|\w\.\w)[.!?][)\"'”’]*$")
#: one token holding a sentence end and the whitespace after it: ".\n", "? "
_END_AND_SPACE_RE = re.compile(r"^\S*?([.!?])\s+$")


class CitationRules:
    """Which tokens open and close citations, are digits, start with whitespace or end sentences, for one
    tokenizer's vocabulary (``texts[i]`` is token i decoded alone), and the citation state of a text."""

    def __init__(self, texts: Sequence[str], eos_ids: Sequence[int]) -> None:
        self.eos_ids = sorted({i for i in eos_ids if 0 <= i < len(texts)})
        ids = {t: i for i, t in reversed(list(enumerate(texts)))}  # the first id of each text
        if "[" not in ids or "]" not in ids:
            raise ValueError("the tokenizer has no '[' or no ']' token")
        self.open_bare, self.close = ids["["], ids["]"]
        self.open_spaced = ids.get(" [", self.open_bare)
        self.digit_ids = {i: t for i, t in enumerate(texts) if t.isascii() and t.isdigit()}
        if not self.digit_ids:
            raise ValueError("the tokenizer has no digit tokens")
        #: tokens that start with whitespace: after a sentence end, they are what says it ended
        self.space_ids = [i for i, t in enumerate(texts) if t[:1].isspace()]
        #: the bare punctuation's token -> tokens holding it and the whitespace after it (".\n", ". ")
        self.end_and_space: dict[int, list[int]] = {}
        for i, t in enumerate(texts):
            if (m := _END_AND_SPACE_RE.match(t)) and m.group(1) in ids and "[" not in t:
                self.end_and_space.setdefault(ids[m.group(1)], []).append(i)

    @staticmethod
    def current_sentence(text: str) -> str:
        """The text's last sentence (the one being written or just ended)."""
        return _SENTENCE_SPLIT_RE.split(text)[-1]

    @staticmethod
    def sentence_needs_citation(text: str) -> bool:
        """Whether the text's last sentence holds words but no citation yet."""
        current = _SENTENCE_SPLIT_RE.split(text)[-1]
        return bool(re.search(r"\w", current)) and not CITATION_RE.search(current)

    @staticmethod
    def ended_uncited(text: str) -> bool:
        """Whether ``text`` ends a sentence (pending the whitespace after it) that cites nothing."""
        return bool(_ENDED_RE.search(text)) and not _NOT_AN_END_RE.search(text) \
            and CitationRules.sentence_needs_citation(text)

    def open_id(self, text: str) -> int:
        """The token that opens a citation after ``text``: glued after punctuation or whitespace."""
        return self.open_bare if not text or text[-1].isspace() or text[-1] in ".!?)\"'”’" else self.open_spaced

    @staticmethod
    def number_prefixes(n_sources: int, numbers: Collection[int] | None = None) -> set[str]:
        """Every prefix of the source numbers 1..n (or of ``numbers``), as digit strings."""
        pool = range(1, n_sources + 1) if numbers is None else numbers
        return {str(m)[:j] for m in pool for j in range(1, len(str(m)) + 1)}

    def inside(self, text: str, n_sources: int, numbers: Collection[int] | None = None
               ) -> tuple[list[int], bool] | None:
        """Inside an opened citation (``text`` ends with ``[`` and digits): the digit tokens that keep a valid
        source-number prefix (of 1..n, or of ``numbers`` when given), and whether closing is allowed now. None
        when ``text`` is not in one."""
        m = _OPEN_DIGITS_RE.search(text)
        if m is None:
            return None
        digits = m.group(1)
        prefixes = self.number_prefixes(n_sources, numbers)
        allowed = [i for i, t in self.digit_ids.items() if digits + t in prefixes]
        valid = range(1, n_sources + 1) if numbers is None else numbers
        can_close = bool(digits) and int(digits) in valid
        return allowed, can_close

    def must_cite_now(self, text: str, tokens_left: int, n_sources: int) -> bool:
        """Whether an uncited sentence must open its citation now so that it fits in the tokens left:
        the opening token, the digits of the largest number, the closing token."""
        return tokens_left <= len(str(n_sources)) + 2 and self.sentence_needs_citation(text)


class CitationLogitsProcessor:
    """A ``transformers`` LogitsProcessor applying CitationRules to one ``generate`` call.

    ``decode`` turns the generated ids (after ``prompt_len``) into text; ``max_new_tokens`` bounds the
    answer. With ``passages`` (the numbered sources' texts, source n at index n-1), a citation is forced
    only where a passage supports the sentence (score >= ``threshold``), and only to such passages. State
    lives in the token sequence itself, except for which ``[`` were opened by the constraint (those are the
    only ones whose contents are restricted): a bracket the model opens itself, say in code, is left alone.
    """

    def __init__(self, rules: CitationRules, n_sources: int, prompt_len: int, max_new_tokens: int,
                 decode: Any, passages: Sequence[str] | None = None,
                 threshold: float = DEFAULT_SUPPORT_THRESHOLD) -> None:
        self.rules = rules
        self.n_sources = n_sources
        self.passages = list(passages) if passages is not None else None
        self.threshold = threshold
        self._allowed: dict[tuple[int, int], list[int] | None] = {}  # (row, position of "[") -> numbers
        self.prompt_len = prompt_len
        self.max_new_tokens = max_new_tokens
        self.decode = decode
        self._opened: dict[tuple[int, int], int] = {}  # (batch row, position) -> the "[" offered there

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.n_sources <= 0:
            return scores
        neg = torch.finfo(scores.dtype).min
        for row in range(input_ids.shape[0]):
            ids = input_ids[row, self.prompt_len:].tolist()
            text = self.decode(ids)
            pos = len(ids)
            opened = self._open_forced(row, ids)
            inside = None if opened is None else self.rules.inside(text, self.n_sources,
                                                                   self._allowed.get((row, opened)))
            if inside is not None:
                digits, can_close = inside
                keep = digits + ([self.rules.close] if can_close else [])
                if keep:
                    mask = torch.full_like(scores[row], neg)
                    mask[keep] = scores[row, keep]
                    scores[row] = mask
                continue
            tokens_left = self.max_new_tokens - pos
            open_id = self.rules.open_id(text)
            if not self.rules.sentence_needs_citation(text):
                continue
            numbers = self._supporting(text)
            if numbers == []:  # no passage supports this sentence: do not make it look sourced
                continue
            self._allowed[(row, pos)] = numbers
            if self.rules.must_cite_now(text, tokens_left, self.n_sources):
                scores[row] = torch.full_like(scores[row], neg)
                scores[row, open_id] = 0.0
                self._opened[(row, pos)] = open_id
            elif self.rules.ended_uncited(text):  # "...blue." + " Next" / end of text -> "...blue.[n]"
                self._move(scores, row, self.rules.space_ids + self.rules.eos_ids, open_id)
                self._opened[(row, pos)] = open_id
            elif self.rules.sentence_needs_citation(text):
                for bare, tokens in self.rules.end_and_space.items():  # ".\n" -> "." first
                    self._move(scores, row, tokens, bare)
                self._move(scores, row, self.rules.eos_ids, open_id)  # stopping mid-sentence -> " [n]"
                self._opened[(row, pos)] = open_id
        return scores

    @staticmethod
    def _move(scores: Any, row: int, sources: list[int], target: int) -> None:
        """Give ``target`` the probability of ``sources`` (and its own); ``sources`` get none."""
        import torch

        moved = [i for i in sources if i != target] + [target]
        total = torch.logsumexp(scores[row, moved].float(), dim=0).to(scores.dtype)
        scores[row, moved] = torch.finfo(scores.dtype).min
        scores[row, target] = total

    def _supporting(self, text: str) -> list[int] | None:
        """The passages supporting the current sentence (None: any source may be cited, no texts given)."""
        if self.passages is None:
            return None
        return supporters(self.rules.current_sentence(text), self.passages, self.threshold)

    def _open_forced(self, row: int, ids: list[int]) -> int | None:
        """The position of the last ``[`` in the generated ids when this processor offered it (and the model
        took it); None otherwise."""
        for pos in range(len(ids) - 1, -1, -1):
            if ids[pos] in (self.rules.open_spaced, self.rules.open_bare):
                return pos if self._opened.get((row, pos)) == ids[pos] else None
            if ids[pos] not in self.rules.digit_ids:
                return None
        return None
