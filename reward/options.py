"""The ``confprofile:`` options of the reward managers: defaults, validation, loading.

The same names are read from the top-level ``confprofile:`` block of a verl Hydra config (the
reward-loop manager) or from keyword arguments (the batch manager, via ``reward_kwargs``). An
unknown option or value (NaN and infinity included) is an error at start-up, never a silent
default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from verl_confprofile.scoring import RewardSpec
from verl_confprofile.taxonomy import Taxonomy

from .group import option_block, positive_seconds

EXTRA_DEFAULTS = {"taxonomy": "profilebench", "group_timeout_s": 300.0}
DEFAULTS = {**EXTRA_DEFAULTS, **RewardSpec().as_dict()}


@dataclass(frozen=True)
class Options:
    spec: RewardSpec
    taxonomy: Taxonomy
    group_timeout_s: float


def read_options(block: Mapping[str, Any] | None) -> Options:
    """Validate a ``confprofile`` mapping (an OmegaConf node or a dict) against DEFAULTS.

    An option given as null (None) takes its default, like an option left out.
    """
    merged = option_block(block, DEFAULTS, "confprofile")
    timeout = positive_seconds(merged["group_timeout_s"], "confprofile.group_timeout_s")
    spec = RewardSpec(**{k: merged[k] for k in RewardSpec.option_names()})
    return Options(spec, Taxonomy.load(merged["taxonomy"]), timeout)
