"""User records: one JSON object per line with ``user_id``, ``behaviors``, ``demographics``, ``labels``.

``behaviors`` maps a behaviour name (watched, searched, posted, ...) to a list of keyphrases;
``demographics`` maps self-reported fields to values (any may be missing or wrong); the
optional ``labels`` maps dimensions to gold labels (evaluation sets; a null label is no
label). A record without any keyphrase cannot be profiled: it is skipped and counted, never
silently dropped.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from verl_confprofile.jsonl import InputError, read_jsonl


@dataclass
class RecordSet:
    """Valid records in file order, keyed by user_id, with counts of what was skipped and why."""

    records: dict[str, dict] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # one "file:line" per skip reason

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)


def read_records(path: str | os.PathLike) -> RecordSet:
    """Read and check a records file. Broken JSON and duplicate users are errors naming the line;
    records without behaviours are skipped and counted (reason ``no_behaviors``)."""
    out = RecordSet()
    lines: dict[str, int] = {}
    for lineno, rec in read_jsonl(path):
        where = f"{path}:{lineno}"
        user = rec.get("user_id")
        if not isinstance(user, (str, int)) or isinstance(user, bool):
            raise InputError(f"{where}: field 'user_id' must be a string or an integer")
        user = str(user)
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
        if not behaviors or not any(behaviors.values()):
            out.skip("no_behaviors", where)
            continue
        out.records[user] = {
            "user_id": user,
            "behaviors": behaviors,
            "demographics": rec.get("demographics") or {},
            # A null label is no label: {"gender": null} leaves the user unlabelled.
            "labels": {k: v for k, v in (rec.get("labels") or {}).items() if v is not None},
        }
    return out
