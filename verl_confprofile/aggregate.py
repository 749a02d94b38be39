"""From raw samples to one profile per user: parse, vote (Eq. 3-5), calibrate, threshold.

This is the path of ``confprofile vote`` (deployment) and ``confprofile eval``. build-sft and
build-rl do not read samples through it: they stream the samples file through
``data_prep.votes`` (counting bad lines instead of stopping), with the same parser and voting.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

from .calibration import Calibrator
from .jsonl import InputError, field, read_jsonl
from .profile_format import Profile, parse_profile
from .taxonomy import Taxonomy
from .voting import vote_profile


def read_samples(path: str | os.PathLike, taxonomy: Taxonomy) -> dict[object, list[Profile]]:
    """Parse a samples JSONL ({user_id, sample_idx, model, text}) into {user_id: [Profile]}.

    Users keep their order of first appearance. A repeated (user_id, sample_idx) is an error:
    it means two runs were concatenated, and voting both copies would double-count a sample.
    """
    users: dict[object, list[Profile]] = {}
    seen: dict[tuple, int] = {}
    for lineno, rec in read_jsonl(path):
        user = field(rec, "user_id", (str, int), path, lineno)
        idx = field(rec, "sample_idx", int, path, lineno)
        text = field(rec, "text", str, path, lineno)
        first = seen.setdefault((user, idx), lineno)
        if first != lineno:
            raise InputError(f"{path}:{lineno}: duplicate sample_idx {idx} for user {user!r} (first at line {first})")
        users.setdefault(user, []).append(parse_profile(text, taxonomy))
    return users


def profile_record(
    user_id: object,
    samples: Sequence[Profile],
    taxonomy: Taxonomy,
    *,
    voting: str = "confidence",
    calibrator: Calibrator | None = None,
    threshold: int | None = None,
) -> dict:
    """The output record of one user. A dimension with no well-formed sample is NA with S = 0.

    ``confidence`` is the calibrated level of S over M = len(samples), or None without a
    calibrator; with ``threshold``, a tag whose confidence is below it becomes NA.
    """
    votes = vote_profile(samples, taxonomy, voting)
    profile, malformed = {}, {}
    for dim in taxonomy:
        v = votes[dim.key]
        conf = calibrator.transform(dim.key, v.score, len(samples)) if calibrator else None
        tag = v.tag if v.tag is not None else dim.na
        if threshold is not None and conf is not None and conf < threshold:
            tag = dim.na
        profile[dim.key] = {"tag": tag, "score": v.score, "votes": v.votes, "margin": v.margin, "confidence": conf}
        malformed[dim.key] = len(samples) - v.n_valid
    return {"user_id": user_id, "profile": profile, "malformed": malformed}


def vote_users(
    users: Mapping[object, Sequence[Profile]], taxonomy: Taxonomy, **options
) -> Iterator[dict]:
    """profile_record for every user, in input order."""
    for user_id, samples in users.items():
        yield profile_record(user_id, samples, taxonomy, **options)
