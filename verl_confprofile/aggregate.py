"""From raw samples to one profile per user: parse, vote (Eq. 3-5), calibrate, threshold.

This is the path of ``confprofile vote`` (deployment) and ``confprofile eval``. build-sft and
build-rl read samples through ``data_prep.votes``, with the same line reader and policy
(``jsonl.sample_line``), parser and tally.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping

from .calibration import Calibrator
from .gc_pause import cyclic_gc_paused
from .jsonl import SampleEvent, SkipLog, iter_lines, sample_line, truncated_event, voted_event
from .tally import UserTally
from .taxonomy import Taxonomy


@cyclic_gc_paused()
def read_samples(
    path: str | os.PathLike,
    taxonomy: Taxonomy,
    *,
    strict: bool = False,
    skips: SkipLog | None = None,
    truncated: SkipLog | None = None,
    drop_truncated: bool = False,
) -> dict[str, UserTally]:
    """Parse a samples JSONL ({user_id, sample_idx, model, text}) into {user_id: UserTally}.

    Users keep their order of first appearance (ids as strings: 7 and "7" are one user), and
    each tally its samples in file order. A broken line and a repeated (user_id, sample_idx)
    (two runs concatenated: voting both copies would double-count a sample; the first is used)
    are skipped and counted in ``skips``, or errors with ``strict``; a line without the sample
    fields is always an error. A sample cut at the token limit (finish_reason "length") is voted
    and counted in ``truncated`` (unless repeated), or, with ``drop_truncated``, skipped and
    counted in ``skips``.
    """
    skips = SkipLog() if skips is None else skips
    truncated = SkipLog() if truncated is None else truncated
    users: dict[str, UserTally] = {}
    for lineno, line in iter_lines(path):
        got = sample_line(line, path, lineno)
        if got is None:
            continue
        if type(got) is not SampleEvent:
            user, idx, text, cut = got[:4]
            if cut and drop_truncated:
                got = truncated_event(path, lineno, idx, user, kept=False)
            else:
                tally = users.get(user)
                if tally is None:
                    tally = users[user] = UserTally(taxonomy, evidence=False)
                got = voted_event(path, lineno, idx, user, tally.add_text(idx, lineno, text), cut)
                if got is None:
                    continue
                if got.kept:
                    truncated.add(got.reason, got.message)
                    continue
        if got.fatal(strict):
            raise got.error()
        skips.add(got.reason, got.message)
    return users


def profile_record(
    user_id: str,
    samples: UserTally,
    taxonomy: Taxonomy,
    *,
    voting: str = "confidence",
    calibrator: Calibrator | None = None,
    threshold: int | None = None,
) -> dict:
    """The output record of one user. A dimension with no well-formed sample is NA with S = 0.

    ``confidence`` is the calibrated level of S over M = samples.num_samples, or None without a
    calibrator; with ``threshold``, a tag whose confidence is below it becomes NA. ``voted_tag``
    is the vote's tag (None without a well-formed sample), to which ``score``, ``votes`` and
    ``margin`` belong, and ``thresholded`` says whether ``tag`` is NA because of the threshold,
    so a thresholded NA is told from a voted one.
    """
    votes = samples.votes(taxonomy, voting)
    m = samples.num_samples
    profile, malformed = {}, {}
    for dim in taxonomy:
        v = votes[dim.key]
        conf = calibrator.transform(dim.key, v.score, m) if calibrator else None
        tag = v.tag if v.tag is not None else dim.na
        thresholded = threshold is not None and conf is not None and conf < threshold and tag != dim.na
        profile[dim.key] = {
            "tag": dim.na if thresholded else tag,
            "voted_tag": v.tag,
            "thresholded": thresholded,
            "score": v.score,
            "votes": v.votes,
            "margin": v.margin,
            "confidence": conf,
        }
        malformed[dim.key] = m - v.n_valid
    return {"user_id": user_id, "profile": profile, "malformed": malformed}


def vote_users(
    users: Mapping[str, UserTally], taxonomy: Taxonomy, **options
) -> Iterator[dict]:
    """profile_record for every user, in input order."""
    for user_id, samples in users.items():
        yield profile_record(user_id, samples, taxonomy, **options)
