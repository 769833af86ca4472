"""Pure checks on answer text: sentences and their citations, loops, and whether a sentence is supported by
the passage it cites.

* ``split_sentences`` cuts text into sentences and the ``[n]`` each cites (a citation right after the
  punctuation belongs to the sentence before it, Wikipedia style).
* ``find_loop`` says where an answer starts repeating itself: a sentence said before, or a span of words
  repeated back to back (``The answer is: The answer is: ...``) with no sentence end in between.
* ``support`` scores how well a passage backs a sentence by lexical overlap: the share of the sentence's
  content words found in the passage, with identifiers (``es_test_crc``, ``--flag``, ``file.json``) required
  outright, since an invented name is the commonest made-up claim. An embedding cosine, when the caller has
  one, can raise the score (a paraphrase) but never lower it, so callers need it only for sentences the
  words alone do not support. Scores are in [0, 1]; ``supported`` compares them with a threshold.

Nothing here loads a model or does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

#: a citation as answers write it: [1], [1, 3], [1;3], [2-4], [2–4] (the one definition esrag uses)
CITATION = r"\[\s*\d+(?:\s*[,;–-]\s*\d+)*\s*\]"
CITATION_RE = re.compile(CITATION)
#: a sentence end: . ! or ? then any citations, then whitespace or the end; or a line break
_END_RE = re.compile(rf"(?<=[.!?])(?:[)\"'”’]*)(?:\s*{CITATION})*(?=\s|$)|\n")
_WORD_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*[A-Za-z0-9_]|[A-Za-z0-9]")
#: identifiers: words with an underscore, a digit, an inner dot or a leading dash (flags), or in backticks
_IDENT_RE = re.compile(r"`([^`]+)`|(--?[A-Za-z][\w-]*)|\b(\w*[_\d]\w*|\w+\.\w+(?:\.\w+)*)\b")
STOPWORDS = frozenset("""
a about above after again all also an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers him his
how i if in into is it its itself just me more most my no nor not now of off on once only or other our out over
own same she should so some such than that the their them then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you your yours one ones
use used uses using like may might must shall
""".split())
#: a list item's marker ("- ", "* ", "1. ", "2) "): a number like that is not a claim
LIST_MARK_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")

#: default threshold of ``support``: half the content words (or cosine-blended score) found in the passage
DEFAULT_SUPPORT_THRESHOLD = 0.5
#: ``find_loop``: a span repeated this many times back to back is a loop
LOOP_REPEATS = 3
#: ``find_loop``: the fewest words a back-to-back repetition must cover ("very very" is not a loop)
LOOP_MIN_WORDS = 6
#: ``find_loop``: 1-8 characters repeated 25 times or more with nothing between ("000000...")
_CHAR_LOOP_RE = re.compile(r"(\S{1,8}?)\1{24,}")
#: ``find_loop``: the longest repeated span (in words) looked for
LOOP_MAX_SPAN_WORDS = 24


@dataclass(frozen=True)
class Sentence:
    """One sentence of a text: ``start``/``end`` are character offsets (citations included), ``text`` the
    sentence without its citations, ``cites`` the source numbers it cites in order."""

    start: int
    end: int
    text: str
    cites: tuple[int, ...]


def cited_numbers(text: str, longest_range: int) -> list[int]:
    """Every number the citations of ``text`` name, in order of appearance (repeats kept): ``[1, 3]`` gives
    1, 3 and ``[2-4]`` gives 2, 3, 4. A range spanning ``longest_range`` or more (a year range such as
    ``[1990-2020]``) is not expanded: its two ends are given instead."""
    out: list[int] = []
    for match in CITATION_RE.finditer(text):
        for part in re.split(r"[,;]", match.group(0).strip("[] ")):
            ends = [int(x) for x in re.split(r"[–-]", part) if x.strip()]
            expand = len(ends) == 2 and 0 < ends[1] - ends[0] < longest_range
            out.extend(range(ends[0], ends[1] + 1) if expand else ends)
    return out


def citation_numbers(text: str) -> list[int]:
    """Every number in the ``[n]``/``[n, m]``/``[n-m]`` citations of ``text``, unique, in order."""
    return list(dict.fromkeys(cited_numbers(text, 50)))


def strip_citations(text: str) -> str:
    return re.sub(r"\s+", " ", CITATION_RE.sub("", text)).strip()


def split_sentences(text: str) -> list[Sentence]:
    """The sentences of ``text`` with the citations each carries; blank pieces are left out. A sentence
    still being written (no end yet) is included as the last one."""
    out: list[Sentence] = []
    start = 0
    for match in _END_RE.finditer(text):
        end = match.end()
        _add(out, text, start, end)
        start = end
    _add(out, text, start, len(text))
    return out


def _add(out: list[Sentence], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    clean = strip_citations(piece)
    if re.search(r"\w", clean):
        lead = len(piece) - len(piece.lstrip())
        out.append(Sentence(start + lead, end, clean, tuple(citation_numbers(piece))))


def normalize(sentence: str) -> str:
    """A sentence reduced for comparison: lowercase words only, citations and list markers dropped."""
    return " ".join(w.lower() for w in _WORD_RE.findall(LIST_MARK_RE.sub("", strip_citations(sentence))))


def repeated_sentences(text: str) -> int:
    """How many sentences of ``text`` repeat an earlier one (after ``normalize``); as in ``find_loop``,
    sentences of fewer than 2 words (``Yes.``, a code fence) do not count."""
    seen: set[str] = set()
    repeats = 0
    for s in split_sentences(text):
        key = normalize(s.text)
        if len(key.split()) < 2:
            continue
        if key in seen:
            repeats += 1
        seen.add(key)
    return repeats


def find_loop(text: str, repeats: int = LOOP_REPEATS, max_span: int = LOOP_MAX_SPAN_WORDS) -> int | None:
    """The character offset where ``text`` starts repeating itself, or None.

    Two signs of a loop: a complete sentence that normalises to an earlier one is cut at its start; and a
    span of 1..``max_span`` words repeated ``repeats`` times back to back (and over at least
    ``LOOP_MIN_WORDS`` words in all), anywhere, is cut after its first copy; so is a run of 1-8 characters
    repeated 25 times or more inside one word (``000000...``). Sentences of fewer than 2 words
    (``Yes.``) are never counted as repeats.
    """
    seen: set[str] = set()
    sentences = split_sentences(text)
    for i, s in enumerate(sentences):
        complete = i < len(sentences) - 1 or bool(_END_RE.search(text[s.start:s.end] + " "))
        key = normalize(s.text)
        if len(key.split()) >= 2 and complete and key in seen:
            return s.start
        seen.add(key)
    if (m := _CHAR_LOOP_RE.search(text)) is not None:
        best_chars: int | None = m.start() + len(m.group(1))
    else:
        best_chars = None
    words = [(m.start(), t) for m in re.finditer(r"\S+", text)
             if (t := strip_citations(m.group(0)).lower().strip(".,;:!?\"'`()"))]
    tokens = [t for _, t in words]
    best: int | None = None
    for span in range(1, max_span + 1):
        copies = max(repeats, -(-LOOP_MIN_WORDS // span))
        for i in range(0, len(tokens) - copies * span + 1):
            if best is not None and i + span >= best:
                break
            first = tokens[i:i + span]
            if all(tokens[i + c * span:i + (c + 1) * span] == first for c in range(1, copies)):
                best = i + span
                break
    at = None if best is None else words[best][0]
    return min((x for x in (at, best_chars) if x is not None), default=None)


def content_words(text: str) -> list[str]:
    """Lowercase words of ``text`` that carry meaning (stopwords and citations dropped), lightly stemmed."""
    words = (w.lower() for w in _WORD_RE.findall(strip_citations(text)))
    return [_stem(w) for w in words if w not in STOPWORDS and not (w.isdigit() and len(w) == 1)]


@lru_cache(maxsize=256)
def _word_set(passage: str) -> frozenset[str]:
    """``content_words`` of a passage as a set, cached: decoding checks the same passages at every token."""
    return frozenset(content_words(passage))


def _stem(word: str) -> str:
    """A crude stem, enough to match plurals and tenses: ``creates``/``created``/``create`` -> ``creat``."""
    if len(word) > 5 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    return word[:-1] if len(word) > 4 and word.endswith("e") else word


def identifiers(text: str) -> list[str]:
    """Names a sentence uses that a source must contain verbatim (case-insensitive): backticked spans,
    flags (``--prune``), and words holding an underscore, a digit or an inner dot (``es_url``, ``bm25``,
    ``esrag.toml``)."""
    out = []
    for m in _IDENT_RE.finditer(strip_citations(text)):
        ident = (m.group(1) or m.group(2) or m.group(3) or "").strip().lower()
        if ident and not ident.isdigit() and ident not in out:
            out.append(ident)
    return out


@dataclass(frozen=True)
class Support:
    """How well one passage backs one sentence: ``lexical`` (share of content words found), ``cosine``
    (None without an embedder), ``missing`` identifiers absent from the passage, and ``score``: lexical, or
    with a cosine the larger of lexical and the mean of the two (the embedding can vouch for a paraphrase,
    never lower a literal match); 0 when an identifier is missing."""

    score: float
    lexical: float
    cosine: float | None
    missing: tuple[str, ...]

    def supported(self, threshold: float = DEFAULT_SUPPORT_THRESHOLD) -> bool:
        return self.score >= threshold and not self.missing


def support(sentence: str, passage: str, cosine: float | None = None) -> Support:
    """Score how well ``passage`` supports ``sentence`` (see the module docstring). A sentence without
    content words (``It is so.``) scores 1: it claims nothing."""
    words = content_words(sentence)
    have = _word_set(passage)
    low = " ".join(passage.split()).lower()
    missing = tuple(i for i in identifiers(sentence) if i not in low)
    lexical = sum(w in have for w in words) / len(words) if words else 1.0
    score = lexical if cosine is None else max(lexical, (lexical + max(0.0, cosine)) / 2)
    return Support(0.0 if missing else score, lexical, cosine, missing)


def supporters(sentence: str, passages: Sequence[str], threshold: float = DEFAULT_SUPPORT_THRESHOLD) -> list[int]:
    """The 1-based numbers of the passages that support ``sentence`` lexically, best first."""
    scored = [(support(sentence, p), n) for n, p in enumerate(passages, 1)]
    return [n for s, n in sorted(scored, key=lambda x: -x[0].score) if s.supported(threshold)]


@dataclass(frozen=True)
class SentenceCheck:
    """One sentence of an answer checked against the sources: ``cites`` the numbers it cites (valid ones),
    ``source`` the passage whose support is reported (the best of those it cites; for an uncited sentence,
    the best of all), ``score`` that support's score, ``supported`` whether it reaches the threshold."""

    text: str
    cites: tuple[int, ...]
    source: int | None
    score: float
    supported: bool

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "cites": list(self.cites), "source": self.source,
                "score": round(self.score, 4), "supported": self.supported}


def check_sentence(sentence: Sentence, passages: Sequence[str], threshold: float = DEFAULT_SUPPORT_THRESHOLD,
                   cosines: Sequence[float] | None = None) -> SentenceCheck:
    """Check ``sentence`` against the passages it cites (1-based into ``passages``; numbers outside are
    ignored), or against every passage when it cites none. ``cosines[i]``: the sentence's embedding cosine
    to passage i+1, when the caller has an embedder."""
    valid = tuple(n for n in sentence.cites if 1 <= n <= len(passages))
    pool = valid or tuple(range(1, len(passages) + 1))
    best: tuple[Support, int] | None = None
    for n in pool:
        s = support(sentence.text, passages[n - 1], cosines[n - 1] if cosines is not None else None)
        if best is None or (s.supported(threshold), s.score) > (best[0].supported(threshold), best[0].score):
            best = (s, n)
    if best is None:  # no passages at all
        return SentenceCheck(sentence.text, valid, None, 0.0, False)
    return SentenceCheck(sentence.text, valid, best[1], best[0].score, best[0].supported(threshold))
