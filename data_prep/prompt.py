"""The confidence-hinted profiling prompt (section A.3, Figure 7), rendered from a taxonomy.

One prompt serves the teacher (``synthesize``), the SFT set and the RL set, so the student is
trained and rewarded on exactly what the teacher was asked. Its parts, in the paper's order:
task, analysis principles (with the rules for answering NA), the profiling system (every
dimension and label of the taxonomy), the confidence criteria, the output format, the user.

Over-long users: when a token budget is given, keyphrases are dropped from the end of the
longest behaviour list, one at a time, until the prompt fits (the newest-last order of the
lists is kept, the most-represented behaviour loses first); demographics are never dropped. A
user that cannot fit even with no keyphrases left is reported, not silently cut.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Callable

from verl_confprofile.profile_format import VERBAL_SCORES
from verl_confprofile.taxonomy import Taxonomy

CONFIDENCE_CRITERIA = {
    5: "explicit, consistent evidence (e.g. a self-report confirmed by many behaviours)",
    4: "strong evidence from several independent cues, no contradiction",
    3: "moderate evidence: a few consistent cues, or strong cues with some contradiction",
    2: "weak or indirect evidence; a plausible guess",
    1: "almost no evidence; the tag is close to a guess",
}


@lru_cache(maxsize=8)
def system_prompt(taxonomy: Taxonomy) -> str:
    """Everything but the user: task, principles, taxonomy, confidence criteria, output format.

    Built once per taxonomy and shared by every prompt: it is the same text for every user, and
    building it is most of the cost of a prompt.
    """
    dims = "\n".join(f"- {d.name} (<{d.key}>): " + SEPARATOR.join(d.labels) for d in taxonomy)
    levels = {v: k for k, v in VERBAL_SCORES.items()}
    criteria = "\n".join(f"- {s} ({levels[s]}): {CONFIDENCE_CRITERIA[s]}" for s in sorted(CONFIDENCE_CRITERIA, reverse=True))
    example = "\n".join(f"<{d.key}><evidence>...</evidence><tag>...</tag><score>...</score></{d.key}>" for d in taxonomy)
    na = {d.na for d in taxonomy}.pop()
    return f"""You are a user-profiling analyst. From a user's behaviour keyphrases (videos watched, searched, posted) and self-reported fields, infer one tag for each dimension of the profiling system below, with your confidence and the evidence behind it.

Analysis principles:
- Reason from the evidence given; self-reported fields can be missing, stale or false, so weigh them against behaviour.
- Interests are not identity: watching content about a group does not make the user a member of it.
- If the evidence for a dimension is insufficient or contradictory, answer {na} rather than guess.
- Choose exactly one tag per dimension, spelled exactly as listed.

Profiling system (dimension (block name): tags):
{dims}

Confidence score, an integer 1-5:
{criteria}

Output format: one block per dimension, in this order, each with the evidence, the tag and the score:
{example}"""


SEPARATOR = "; "  # between the keyphrases of a behaviour list, and between the labels of a dimension


def user_prompt(record: dict) -> str:
    """The user's information: one line per behaviour list that has keyphrases and per self-reported field."""
    behaviors = [(name, phrases) for name, phrases in (record.get("behaviors") or {}).items() if phrases]
    lines = ["User information:", "Behaviours:"]
    lines += [f"- {name}: {SEPARATOR.join(_phrase(str(p)) for p in phrases)}" for name, phrases in behaviors] or ["- none"]
    lines.append("Self-reported (may be missing or wrong):")
    lines += [f"- {key}: {_text(value)}" for key, value in (record.get("demographics") or {}).items()] or ["- none"]
    return "\n".join(lines)


def _phrase(text: str) -> str:
    """A keyphrase as written in its list: as it is, or as a JSON string when it holds the list's
    separator ';', a line break or a leading quote, so the list reads one way only."""
    return json.dumps(text, ensure_ascii=False) if ";" in text or _breaks_line(text) or text.startswith('"') else text


def _text(value: object) -> str:
    """A self-reported value as text: strings as they are (as JSON when they hold a line break or
    start with a quote), anything else as JSON (never a Python repr)."""
    if isinstance(value, str) and not (_breaks_line(value) or value.startswith('"')):
        return value
    return json.dumps(value, ensure_ascii=False)


def _breaks_line(text: str) -> bool:
    """Whether ``text`` holds a line break (any str.splitlines one), which would start a false line."""
    return text.splitlines() != [text]


def messages(record: dict, taxonomy: Taxonomy) -> list[dict]:
    """The chat prompt for one user."""
    return [{"role": "system", "content": system_prompt(taxonomy)}, {"role": "user", "content": user_prompt(record)}]


def prompt_digest(chat: list[dict]) -> str:
    """The SHA-256 of a chat prompt as sent: synthesize stores it with each sample, so a resumed
    run and the builds can tell samples drawn with another prompt."""
    return hashlib.sha256(json.dumps(chat, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def _drop(behaviors: dict[str, list], count: int) -> dict[str, list]:
    """Behaviours after dropping ``count`` keyphrases, each from the end of the longest list."""
    kept = {k: len(v) for k, v in behaviors.items()}
    for _ in range(count):
        longest = max(kept, key=kept.get)
        kept[longest] -= 1
    return {k: list(v[: kept[k]]) for k, v in behaviors.items()}


def fit_messages(
    record: dict, taxonomy: Taxonomy, count_tokens: Callable[[list[dict]], int], max_tokens: int
) -> tuple[list[dict], int]:
    """The prompt within ``max_tokens`` and how many keyphrases were dropped to get there.

    Binary search over the number of dropped keyphrases, so a user with thousands of them costs a
    dozen tokenisations. Raises ValueError when even the prompt without keyphrases is too long.
    """
    behaviors = {k: list(v) for k, v in (record.get("behaviors") or {}).items()}
    chat = messages(record, taxonomy)
    if count_tokens(chat) <= max_tokens:
        return chat, 0
    total = sum(len(v) for v in behaviors.values())
    bare = messages(dict(record, behaviors=_drop(behaviors, total)), taxonomy)
    if count_tokens(bare) > max_tokens:
        raise ValueError(f"prompt needs {count_tokens(bare)} tokens without any keyphrase (limit {max_tokens})")
    low, high = 1, total  # the fewest drops that fit lie in [low, high]
    while low < high:
        mid = (low + high) // 2
        if count_tokens(messages(dict(record, behaviors=_drop(behaviors, mid)), taxonomy)) <= max_tokens:
            high = mid
        else:
            low = mid + 1
    return messages(dict(record, behaviors=_drop(behaviors, low)), taxonomy), low
