"""User records: one JSON object per line with ``user_id``, ``behaviors``, ``demographics``, ``labels``.

``behaviors`` maps a behaviour name (watched, searched, posted, ...) to a list of keyphrases;
``demographics`` maps self-reported fields to values (any may be missing or wrong); the
optional ``labels`` maps dimensions to gold labels (evaluation sets; a null label is no
label). A record without any keyphrase cannot be profiled: it is skipped and counted, never
silently dropped.

A keyphrase is a string with some non-space text, or a number (read as its text). Anything else
in a behaviour list (null, "", a boolean, an object, a list) is not a keyphrase: it is dropped
and counted (``empty_keyphrase``, ``non_text_keyphrase``) rather than rendered into the prompt as
``None`` or a Python repr; a self-reported field that is null or empty is dropped and counted the
same way (``empty_demographic``). A record left without keyphrases is skipped as above.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from verl_confprofile.jsonl import InputError, read_jsonl
from verl_confprofile.jsonl import field as checked_field

# What each reason of ``RecordSet.dropped`` drops, for the messages.
DROPPED_VALUES = {
    "empty_keyphrase": "empty keyphrases",
    "non_text_keyphrase": "keyphrases that are not text",
    "empty_demographic": "empty self-reported fields",
}


def dropped_message(reason: str, count: int) -> str:
    """'dropped N <what> (<reason>)': what a reason of ``RecordSet.dropped`` counts, in words."""
    return f"dropped {count} {DROPPED_VALUES[reason]} ({reason})"


@dataclass
class RecordSet:
    """Valid records in file order, keyed by user_id, with counts of what was skipped and why."""

    records: dict[str, dict] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # one "file:line" per skip reason
    dropped: Counter = field(default_factory=Counter)  # values dropped from kept or skipped records, by reason
    dropped_examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        self.dropped_examples.setdefault(reason, where)


def _keyphrase(value: object) -> tuple[str | None, str | None]:
    """(the keyphrase text, None) or (None, the reason it is not one)."""
    if isinstance(value, str):
        return (value, None) if value.strip() else (None, "empty_keyphrase")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), None
    return None, "empty_keyphrase" if value is None else "non_text_keyphrase"


def read_records(path: str | os.PathLike) -> RecordSet:
    """Read and check a records file. Broken JSON and duplicate users are errors naming the line;
    records without keyphrases are skipped and counted (reason ``no_behaviors``), values that are
    not keyphrases or fields are dropped and counted (``RecordSet.dropped``)."""
    out = RecordSet()
    lines: dict[str, int] = {}
    for lineno, rec in read_jsonl(path):
        where = f"{path}:{lineno}"
        user = str(checked_field(rec, "user_id", (str, int), path, lineno))
        if user in lines:
            raise InputError(f"{where}: duplicate user_id {user!r} (first at line {lines[user]})")
        lines[user] = lineno
        behaviors = rec.get("behaviors")
        if behaviors is not None and not (
            isinstance(behaviors, dict) and all(isinstance(v, list) for v in behaviors.values())
        ):
            raise InputError(f"{where}: field 'behaviors' must map names to lists of keyphrases")
        for name in ("demographics", "labels"):
            if rec.get(name) is not None and not isinstance(rec[name], dict):
                raise InputError(f"{where}: field {name!r} must be an object")
        kept: dict[str, list[str]] = {}
        for name, phrases in (behaviors or {}).items():
            kept[name] = []
            for value in phrases:
                text, reason = _keyphrase(value)
                if reason is None:
                    kept[name].append(text)
                else:
                    out.drop(reason, where)
        demographics = {}
        for key, value in (rec.get("demographics") or {}).items():
            if value is None or (isinstance(value, str) and not value.strip()):
                out.drop("empty_demographic", where)
            else:
                demographics[key] = value
        if not any(kept.values()):
            out.skip("no_behaviors", where)
            continue
        out.records[user] = {
            "user_id": user,
            "behaviors": kept,
            "demographics": demographics,
            # A null label is no label: {"gender": null} leaves the user unlabelled.
            "labels": {k: v for k, v in (rec.get("labels") or {}).items() if v is not None},
        }
    return out
