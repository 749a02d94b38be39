"""A synthetic user population and a simulated teacher, for demos, tests and benchmarks.

This is not a model. Each simulated user has a hidden true profile and, per dimension, an
evidence strength e in [0, 1] that decides how many of their keyphrases point at the truth.
The simulated teacher answers every dimension independently with noise that has the shape the
paper describes: it is right more often when evidence is strong (P = 0.35 + 0.6 e), says NA or
guesses a wrong tag otherwise, gives informative but imperfect confidence (right answers score
higher on average, with overlap), and breaks the format of about ``malformed_rate`` of samples
(a missing score, an out-of-set tag, a duplicated block or a truncated output). Everything is a
pure function of (seed, user, sample index), so re-running gives the same text.
"""

from __future__ import annotations

import random
from typing import Iterator

from verl_confprofile.profile_format import render_profile
from verl_confprofile.taxonomy import Dimension, Taxonomy

SIMULATED_MODEL = "simulated-teacher"  # the model name of every simulated sample

_TOPICS = ("tips", "daily vlog", "news", "tutorial", "career talk", "discussion", "review", "stories")
_NOISE = ("street food", "cat videos", "football highlights", "travel vlog", "mobile games", "funny clips",
          "cooking at home", "pop music", "car reviews", "fitness routine", "movie trailers", "weather")
_REGIONS = ("Beijing", "Shanghai", "Chengdu", "Guangzhou", "Wuhan", "Xi'an", "Hangzhou")
_CORRUPTIONS = ("no_score", "bad_tag", "duplicate", "truncate")


def _rng(seed: int, *parts: object) -> random.Random:
    return random.Random(f"{seed}|" + "|".join(map(str, parts)))


def _real_labels(dim: Dimension) -> list[str]:
    return [x for x in dim.labels if x != dim.na]


class SimulatedPopulation:
    """Users with hidden true profiles and a noisy, confidence-hinted simulated teacher."""

    def __init__(self, taxonomy: Taxonomy, seed: int = 0, malformed_rate: float = 0.05):
        self.taxonomy = taxonomy
        self.seed = seed
        self.malformed_rate = malformed_rate

    def truth(self, user_id: str) -> dict[str, tuple[str, float]]:
        """{dim: (true label, evidence strength)} of a user."""
        rng = _rng(self.seed, "truth", user_id)
        return {d.key: (rng.choice(_real_labels(d)), rng.betavariate(1.6, 1.4)) for d in self.taxonomy}

    def record(self, user_id: str, with_labels: bool = False) -> dict:
        """A user record: keyphrase behaviours pointing (more or less) at the truth, noisy demographics."""
        rng = _rng(self.seed, "record", user_id)
        truth = self.truth(user_id)
        watched, searched, posted = [], [], []
        for dim in self.taxonomy:
            label, strength = truth[dim.key]
            for _ in range(round(strength * 4)):
                rng.choice((watched, watched, searched, posted)).append(f"{label.lower()} {rng.choice(_TOPICS)}")
            if rng.random() < 0.3:  # a misleading cue
                watched.append(f"{rng.choice(_real_labels(dim)).lower()} {rng.choice(_TOPICS)}")
        for bucket in (watched, searched):
            bucket.extend(rng.sample(_NOISE, 3))
            rng.shuffle(bucket)
        demographics = {"region": rng.choice(_REGIONS)}
        for key in ("gender", "age"):
            if key in truth and rng.random() < 0.6:
                label = truth[key][0] if rng.random() < 0.8 else rng.choice(_real_labels(self.taxonomy[key]))
                demographics[key] = label
        if rng.random() < 0.5:
            demographics["signature"] = rng.choice(("living my best life", "work hard, play hard", "just moving bricks"))
        rec = {"user_id": user_id, "behaviors": {"watched": watched, "searched": searched, "posted": posted},
               "demographics": demographics}
        if with_labels:
            rec["labels"] = {k: v[0] for k, v in truth.items()}
        return rec

    def answer(self, user_id: str, sample_idx: int) -> dict[str, tuple[str, int, str]]:
        """One simulated teacher answer: {dim: (tag, confidence 1..5, evidence)}."""
        rng = _rng(self.seed, "sample", user_id, sample_idx)
        profile, truth = {}, self.truth(user_id)
        for dim in self.taxonomy:
            label, e = truth[dim.key]
            u = rng.random()
            if u < 0.35 + 0.6 * e:
                tag, conf = label, 2.2 + 2.8 * e + rng.gauss(0, 0.8)
            elif rng.random() < 0.6 * (1 - e):
                tag, conf = dim.na, 1.5 + rng.gauss(0, 0.7)
            else:
                tag, conf = rng.choice(_real_labels(dim)), 1.6 + 2.0 * e + rng.gauss(0, 0.9)
            evidence = (
                f"Keyphrases such as '{label.lower()} {rng.choice(_TOPICS)}' and the self-reported fields "
                f"{'support' if tag == label else 'only weakly suggest'} {tag}; other interests are generic."
            )
            profile[dim.key] = (tag, min(5, max(1, round(conf))), evidence)
        return profile

    def sample_text(self, user_id: str, sample_idx: int) -> str:
        """The raw text of one simulated teacher sample (about 1.5 KB with six dimensions)."""
        rng = _rng(self.seed, "text", user_id, sample_idx)
        reasoning = "Weighing the behaviours against the self-reported fields for " + ", ".join(
            d.name.lower() for d in self.taxonomy
        ) + "; self-reports can be stale, so repeated interests count for more."
        text = f"<think>{reasoning}</think>\n" + render_profile(self.answer(user_id, sample_idx), self.taxonomy)
        if rng.random() < self.malformed_rate:
            text = self._corrupt(text, rng)
        return text

    def _corrupt(self, text: str, rng: random.Random) -> str:
        dim = rng.choice(self.taxonomy.dimensions).key
        kind = rng.choice(_CORRUPTIONS)
        start, end = text.find(f"<{dim}>"), text.find(f"</{dim}>") + len(f"</{dim}>")
        block = text[start:end]
        if kind == "no_score":
            return text.replace(block, block[: block.find("<score>")] + f"</{dim}>")
        if kind == "bad_tag":
            inner = block[block.find("<tag>") + 5 : block.find("</tag>")]
            return text.replace(f"<tag>{inner}</tag>", "<tag>Somewhere in between</tag>", 1)
        if kind == "duplicate":
            return text + "\n" + block
        return text[: rng.randrange(len(text) // 2, len(text) - 20)]

    def samples(self, user_ids: list[str], num_samples: int, model: str = SIMULATED_MODEL) -> Iterator[dict]:
        """Sample records in the samples-file format, user by user."""
        for user_id in user_ids:
            for idx in range(num_samples):
                yield {"user_id": user_id, "sample_idx": idx, "model": model, "text": self.sample_text(user_id, idx)}
