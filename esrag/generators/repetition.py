"""Keeping in-process decoding from repeating itself: n-gram blocking and a repetition penalty, over the
answer's own tokens only.

``transformers`` has both (``no_repeat_ngram_size``, ``repetition_penalty``), but they count the prompt too,
so they would stop an answer from quoting its sources, which is what a grounded answer does. Here only the
generated tokens count, and citation brackets are exempt (every n-gram spanning a citation holds one), so
``.[1] ... .[1]`` stays possible; digits are spared the penalty, not the n-gram ban. ``banned_next`` is the
pure rule; ``RepetitionLogitsProcessor`` applies it in ``generate``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any


def banned_next(ids: Sequence[int], n: int, exempt: Collection[int] = ()) -> set[int]:
    """Tokens that would complete an n-gram already present in ``ids`` (the answer so far).

    ``n < 2`` bans nothing. An n-gram holding an ``exempt`` token (in its prefix or as the next token) is
    never banned.
    """
    if n < 2 or len(ids) < n:
        return set()
    prefix = tuple(ids[len(ids) - n + 1:])
    if any(t in exempt for t in prefix):
        return set()
    banned = set()
    for i in range(len(ids) - n + 1):
        if tuple(ids[i:i + n - 1]) == prefix and ids[i + n - 1] not in exempt:
            banned.add(ids[i + n - 1])
    return banned


def penalize(score: float, penalty: float) -> float:
    """The CTRL repetition penalty on one logit: divided by ``penalty`` when positive, multiplied when not."""
    return score / penalty if score > 0 else score * penalty


class RepetitionLogitsProcessor:
    """A ``transformers`` LogitsProcessor: penalise tokens the answer already used (``penalty`` > 1) and ban
    tokens completing a repeated n-gram (``ngram`` >= 2), counting only tokens after ``prompt_len`` and
    leaving ``exempt`` tokens alone; ``unpenalized`` tokens are only spared the penalty (digits: a source
    number cited twice is not a repeat, but "000000" is)."""

    def __init__(self, prompt_len: int, ngram: int, penalty: float, exempt: Collection[int] = (),
                 unpenalized: Collection[int] = ()) -> None:
        self.prompt_len = prompt_len
        self.ngram = ngram
        self.penalty = penalty
        self.exempt = frozenset(exempt)
        self.unpenalized = self.exempt | frozenset(unpenalized)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        neg = torch.finfo(scores.dtype).min
        for row in range(input_ids.shape[0]):
            ids = input_ids[row, self.prompt_len:].tolist()
            if self.penalty != 1.0:
                used = sorted(set(ids) - self.unpenalized)
                if used:
                    picked = scores[row, used]
                    scores[row, used] = torch.where(picked > 0, picked / self.penalty, picked * self.penalty)
            banned = sorted(banned_next(ids, self.ngram, self.exempt))
            if banned:
                scores[row, banned] = neg
        return scores
