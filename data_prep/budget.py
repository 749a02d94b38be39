"""Prompt budgets: count prompt tokens with a tokenizer and fit over-long prompts.

``fit_prompts`` renders the chat prompt of a batch of records (``prompt.messages``) and, under a
``PromptBudget``, counts them in one tokenizer call; a prompt over the budget is fitted by
``prompt.fit_messages`` (keyphrases dropped, never demographics), or reported when even its
bare form does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from verl_confprofile.taxonomy import Taxonomy

from .prompt import fit_messages, messages

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer in ``path`` (loaded once per process, so each Ray worker loads it once)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@dataclass(frozen=True)
class PromptBudget:
    """The longest prompt allowed, in tokens counted as verl's RLHFDataset counts them: the chat
    template with the generation prompt, tokenised without extra special tokens."""

    tokenizer: str
    max_tokens: int

    def count(self, chats: list[list[dict]]) -> list[int]:
        tok = load_tokenizer(self.tokenizer)
        texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def count_conversations(tokenizer: str, chats: list[list[dict]]) -> list[int]:
    """Tokens of whole conversations (prompt and answer), as verl's SFT counts a row against its
    ``data.max_length``: the chat template without a generation prompt, no extra special tokens."""
    tok = load_tokenizer(tokenizer)
    texts = [tok.apply_chat_template(c, tokenize=False) for c in chats]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


class PromptFit(NamedTuple):
    """A user's chat prompt, the keyphrases dropped to fit it, its length (None when not counted),
    or ``error`` when it cannot fit even without keyphrases."""

    messages: list[dict] | None
    dropped: int
    tokens: int | None
    error: str | None


def prompt_report(fits: list[PromptFit], budget: PromptBudget | None) -> dict:
    """Prompt-length section of a report: the limit, truncated users, dropped keyphrases, longest prompt."""
    tokens = [f.tokens for f in fits if f.tokens is not None]
    return {
        "max_prompt_length": budget.max_tokens if budget else None,
        "tokenizer": budget.tokenizer if budget else None,
        "truncated_users": sum(1 for f in fits if f.dropped),
        "dropped_keyphrases": sum(f.dropped for f in fits),
        "longest_prompt_tokens": max(tokens, default=None),
    }


def prompt_summary(report: dict) -> str:
    """The prompt part of a command's summary line, from ``prompt_report``: synthesize and both builds
    print the same words, so a budget that cut prompts in one and not the other shows."""
    if report["max_prompt_length"] is None:
        return "prompts: no token budget"
    return (
        f"prompts: at most {report['max_prompt_length']} tokens, {report['truncated_users']} users truncated "
        f"({report['dropped_keyphrases']} keyphrases dropped), longest {report['longest_prompt_tokens']}"
    )


def fit_prompts(records: list[dict], taxonomy: Taxonomy, budget: PromptBudget | None) -> list[PromptFit]:
    """Prompts of a batch of records; over-long ones are fitted by ``prompt.fit_messages``."""
    chats = [messages(r, taxonomy) for r in records]
    if budget is None:
        return [PromptFit(c, 0, None, None) for c in chats]
    out = []
    for record, chat, tokens in zip(records, chats, budget.count(chats)):
        if tokens <= budget.max_tokens:
            out.append(PromptFit(chat, 0, tokens, None))
            continue
        try:
            chat, dropped = fit_messages(record, taxonomy, lambda c: budget.count([c])[0], budget.max_tokens)
        except ValueError as exc:
            out.append(PromptFit(None, 0, None, str(exc)))
            continue
        out.append(PromptFit(chat, dropped, budget.count([chat])[0], None))
    return out
