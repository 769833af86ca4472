"""Follow-up questions: what to retrieve for the last turn of a conversation.

A chat client sends the whole conversation, and a follow-up such as "Which command does that?" names
nothing that retrieval could find. ``standalone_question`` turns the last user question and the turns
before it into the question that is retrieved for and answered:

- with a generator that can rewrite (``rewrites_questions``: an LLM behind ``openai_compat``), the LLM
  rewrites the question into a standalone one (``rewrite_messages``), in at most ``REWRITE_MAX_TOKENS``;
  a reply that is not a rewrite of the question (``parse_rewrite``: an answer, chatter, the question's
  own words lost, or a question that points back returned unchanged) falls back to the rule;
- without one, the rule ``rule_question``: when the question refers back (``refers_back``: a pronoun or
  demonstrative such as it, that, there, one; an opening such as "and", "what about"; three words or
  fewer), the previous user questions, oldest first, then the question (``with_previous_questions``,
  within ``CONTEXT_CHARS``); otherwise the question alone.

The rule is measured by ``scripts/bench_followups.py`` on 16 follow-ups and 6 topic switches about esrag's
own docs (MiniLM, the embedded store, 5 passages): an answering passage was retrieved for 14 of the 16
follow-ups (MRR 0.80) against 9 (0.53) with the question alone; always adding the previous question also
finds 14 (0.77) but loses a topic switch (4 of 6, MRR 0.32, against 5 of 6, 0.75, for the question alone
and for the rule); adding the previous answer too is worse (12 of 16, and 0 of 6 switches). The packaged
SmolLM2-135M rewrites poorly (it answers, or repeats the question): most of its replies are refused and the
rule applies, and with it the set scores as with the rule (14 of 16, 5 of 6); a real chat model's rewrites
have not been measured here.

A first question (no earlier user turn) is returned unchanged, without calling the LLM. Pure functions but
``standalone_question``, which calls the generator.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from esrag.answering.checks import content_words
from esrag.errors import GeneratorError
from esrag.generators.base import Generator, Message

log = logging.getLogger(__name__)

#: characters of earlier user questions the rule adds to the question (the newest ones)
CONTEXT_CHARS = 1000
#: tokens the LLM may spend on a rewrite
REWRITE_MAX_TOKENS = 96
#: characters of each earlier turn shown to the LLM (a long answer is cut)
REWRITE_TURN_CHARS = 600
#: a rewrite longer than this many times the conversation's questions is chatter, not a question
REWRITE_MAX_GROWTH = 3

#: words that point back into the conversation (pronouns, demonstratives, "there", "one")...
_REFERRING = frozenset("it its itself that this these those they them their theirs there one ones both "
                       "same such former latter above previous".split())
#: ...and openings that continue it ("And to the files?", "What about Kibana?")
_CONTINUING = re.compile(r"^\s*(?:and|also|but|so|then|what about|how about)\b", re.IGNORECASE)
#: a question this short (in words) is read as a follow-up ("Why?", "And Kibana?")
SHORT_QUESTION_WORDS = 3

REWRITE_SYSTEM = (
    "You rewrite the last question of a conversation so that it can be understood without the "
    "conversation. Replace words such as it, that, this, they, there and one with what they refer to in the "
    "earlier turns. If the question already stands alone, repeat it unchanged. Do not answer it. Reply with "
    "the rewritten question only, on one line."
)


@dataclass(frozen=True)
class Standalone:
    """The question retrieved for and answered, and how it was made: ``question`` (the last user turn as
    it is: no earlier question), ``llm`` (rewritten by the generator) or ``rule`` (earlier questions
    added)."""

    text: str
    how: Literal["question", "llm", "rule"]


def previous_questions(history: Sequence[Message]) -> list[str]:
    """The user turns of ``history`` (the conversation before the last question), oldest first, blank ones
    left out."""
    return [m.content.strip() for m in history if m.role == "user" and m.content.strip()]


def refers_back(question: str) -> bool:
    """Whether ``question`` reads as a follow-up: it has a word that points back (``it``, ``that``,
    ``there``, ``one``...), opens with a continuation (``and``, ``what about``...) or is at most
    ``SHORT_QUESTION_WORDS`` words long."""
    words = re.findall(r"[a-z]+", question.lower())
    return (len(words) <= SHORT_QUESTION_WORDS or bool(_CONTINUING.match(question))
            or any(w in _REFERRING for w in words))


def with_previous_questions(question: str, history: Sequence[Message], max_chars: int = CONTEXT_CHARS) -> str:
    """The rule: the previous user questions (the newest ones within ``max_chars``, in their order) and
    then ``question``, one per line. ``question`` alone when there is no earlier one."""
    kept: list[str] = []
    used = 0
    for earlier in reversed(previous_questions(history)):
        if used + len(earlier) > max_chars:
            break
        kept.insert(0, earlier)
        used += len(earlier) + 1
    return "\n".join([*kept, question.strip()])


#: one worked example, given as an earlier exchange: models follow a shown format better than a described one
REWRITE_EXAMPLE = (
    "Conversation:\nUser: Which port does the database listen on?\nAssistant: It listens on port 5432 [1]."
    "\n\nLast question: How do I change it?\n\nStandalone question:",
    "How do I change the port the database listens on?",
)


def rewrite_messages(question: str, history: Sequence[Message]) -> list[Message]:
    """The prompt that asks an LLM for the standalone question: the rules, a worked example
    (``REWRITE_EXAMPLE``), then the earlier turns (user and assistant, each cut to ``REWRITE_TURN_CHARS``)
    and the last question."""
    lines = []
    for m in history:
        if m.role in ("user", "assistant") and m.content.strip():
            text = " ".join(m.content.split())
            if len(text) > REWRITE_TURN_CHARS:
                text = text[:REWRITE_TURN_CHARS].rsplit(" ", 1)[0] + " …"
            lines.append(f"{'User' if m.role == 'user' else 'Assistant'}: {text}")
    user = ("Conversation:\n" + "\n".join(lines) + f"\n\nLast question: {' '.join(question.split())}\n\n"
            "Standalone question:")
    return [Message("system", REWRITE_SYSTEM), Message("user", REWRITE_EXAMPLE[0]),
            Message("assistant", REWRITE_EXAMPLE[1]), Message("user", user)]


def parse_rewrite(text: str, question: str, history: Sequence[Message]) -> str | None:
    """The standalone question in an LLM's reply, or None when the reply is not a usable rewrite of
    ``question``: empty; not a question when ``question`` is one (no final ``?``: an answer, or chatter);
    keeping fewer than half of the question's content words (a rewrite only resolves what the question
    refers to); the question unchanged although it refers back (``refers_back``: nothing was resolved); or
    longer than ``REWRITE_MAX_GROWTH`` times the conversation's questions. Reads the first non-empty line,
    without a leading label ("Standalone question:") or surrounding quotes."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    label, sep, rest = line.partition(":")
    if sep and label.lower().strip("* ") in ("standalone question", "rewritten question", "question"):
        line = rest.strip()
    line = line.strip("\"'`*“”").strip()
    if not line or (question.rstrip().endswith("?") and not line.endswith("?")):
        return None
    own = set(content_words(question))
    if own and len(own & set(content_words(line))) * 2 < len(own):
        return None
    if " ".join(line.lower().split()) == " ".join(question.lower().split()) and refers_back(question):
        return None
    asked = sum(len(q) for q in previous_questions(history)) + len(question)
    return line if len(line) <= REWRITE_MAX_GROWTH * asked else None


def rule_question(question: str, history: Sequence[Message]) -> Standalone:
    """The rule, without an LLM: the earlier questions added (``with_previous_questions``) when the question
    refers back (``refers_back``), else the question as it is."""
    if previous_questions(history) and refers_back(question):
        return Standalone(with_previous_questions(question, history), "rule")
    return Standalone(question, "question")


def standalone_question(question: str, history: Sequence[Message], generator: Generator | None) -> Standalone:
    """What to retrieve for and answer (the module docstring): the question itself when nothing came before
    it, the LLM's rewrite when ``generator`` rewrites questions and its reply is usable, else the rule. A
    failing LLM (GeneratorError) falls back to the rule, logged: the answer that follows reports a down
    server itself."""
    if not previous_questions(history):
        return Standalone(question, "question")
    if generator is not None and getattr(generator, "rewrites_questions", False):
        try:
            reply = generator.rewrite(rewrite_messages(question, history), REWRITE_MAX_TOKENS)  # type: ignore[attr-defined]
        except GeneratorError as e:
            log.warning("rewriting a follow-up question failed, using the earlier questions instead: %s", e)
        else:
            rewritten = parse_rewrite(reply, question, history)
            if rewritten is not None:
                return Standalone(rewritten, "llm")
            log.info("the LLM's rewrite of a follow-up question was not usable: %r", reply[:200])
    return rule_question(question, history)
