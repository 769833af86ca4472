"""esrag.answering.conversation: what a chat retrieves for a follow-up (the rule, the LLM's rewrite and its checks),
with a scripted rewriter instead of a model for the control flow."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from esrag.answering.conversation import (
    REWRITE_MAX_TOKENS,
    Standalone,
    parse_rewrite,
    refers_back,
    rewrite_messages,
    standalone_question,
    with_previous_questions,
)
from esrag.errors import GeneratorError
from esrag.generators.base import Generator, Message

KEYS = "How often are the keys rotated?"
FOLLOW = "Which command does that?"
HISTORY = [Message("user", KEYS), Message("assistant", "Every 90 days, with `vault rotate` [1].")]


def test_a_question_reads_as_a_follow_up_when_it_points_back_continues_or_is_short() -> None:
    assert refers_back(FOLLOW) and refers_back("Where does the embedded one keep its data?")
    assert refers_back("And to the files it cannot read?") and refers_back("What about Kibana?")
    assert refers_back("Why?") and refers_back("and backups")
    assert not refers_back("How is a chunk id computed?")
    assert not refers_back("Which entry-point groups can plugins register in?")


def test_the_rule_puts_the_earlier_questions_first_within_the_budget() -> None:
    history = [Message("user", "first question"), Message("assistant", "an answer"),
               Message("user", "second question"), Message("system", "ignored"), Message("user", "  ")]
    assert with_previous_questions(FOLLOW, history) == f"first question\nsecond question\n{FOLLOW}"
    assert with_previous_questions(FOLLOW, history, max_chars=20) == f"second question\n{FOLLOW}"
    assert with_previous_questions(FOLLOW, []) == FOLLOW


def test_the_rewrite_prompt_shows_the_turns_and_asks_for_the_last_question_only() -> None:
    long_answer = Message("assistant", "word " * 400)
    messages = rewrite_messages(FOLLOW, [*HISTORY, long_answer])
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    last = messages[-1].content
    assert f"User: {KEYS}\nAssistant: Every 90 days" in last
    assert last.endswith(f"Last question: {FOLLOW}\n\nStandalone question:")
    assert len(last) < 2000 and " …" in last  # the long answer is cut


def test_a_rewrite_is_taken_only_when_it_is_a_rewrite_of_the_question() -> None:
    ok = "Which command rotates the keys?"
    assert parse_rewrite(f"Standalone question: \"{ok}\"\nbecause...", FOLLOW, HISTORY) == ok
    assert parse_rewrite("", FOLLOW, HISTORY) is None
    assert parse_rewrite("The command `vault rotate` rotates the keys.", FOLLOW, HISTORY) is None  # an answer
    assert parse_rewrite("How do I change the memory of a device?", FOLLOW, HISTORY) is None  # lost 'command'
    assert parse_rewrite("which command does  that?", FOLLOW, HISTORY) is None  # nothing resolved
    assert parse_rewrite("Which command " + "and key " * 100 + "?", FOLLOW, HISTORY) is None  # chatter
    standalone = "How is a chunk id computed?"
    assert parse_rewrite(standalone, standalone, HISTORY) == standalone  # unchanged, and it stands alone


class Rewriter(Generator):
    """Replies to rewrite requests with a scripted text (or fails), and records them."""

    name = "rewriter"
    model = "scripted"
    rewrites_questions = True

    def __init__(self, reply: str | Exception) -> None:
        self.reply = reply
        self.calls: list[tuple[list[Message], int]] = []

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        yield "not used"

    def rewrite(self, messages: Sequence[Message], max_tokens: int) -> str:
        self.calls.append((list(messages), max_tokens))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def test_the_standalone_question_comes_from_the_llm_else_from_the_rule() -> None:
    llm = Rewriter("Which command rotates the keys?")
    assert standalone_question(FOLLOW, HISTORY, llm) == Standalone("Which command rotates the keys?", "llm")
    assert llm.calls[0][1] == REWRITE_MAX_TOKENS
    rule = Standalone(f"{KEYS}\n{FOLLOW}", "rule")
    assert standalone_question(FOLLOW, HISTORY, Rewriter("It is `vault rotate`.")) == rule  # unusable reply
    assert standalone_question(FOLLOW, HISTORY, Rewriter(GeneratorError("LLM down"))) == rule
    assert standalone_question(FOLLOW, HISTORY, None) == rule
    first = Rewriter("never asked")
    assert standalone_question(KEYS, [], first) == Standalone(KEYS, "question") and not first.calls
    switch = "How is a chunk id computed?"
    assert standalone_question(switch, HISTORY, None) == Standalone(switch, "question")
