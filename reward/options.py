"""The ``confprofile:`` options of the reward managers: defaults, validation, loading.

The same names are read from the top-level ``confprofile:`` block of a verl Hydra config (the
reward-loop manager) or from keyword arguments (the batch manager, via ``reward_kwargs``). An
unknown option or value is an error at start-up, never a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from verl_confprofile.scoring import RewardSpec
from verl_confprofile.taxonomy import Taxonomy

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
    given = dict(_plain(block) or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"confprofile: unknown option(s) {', '.join(unknown)}; known options: {', '.join(DEFAULTS)}")
    merged = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    timeout = merged["group_timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"confprofile.group_timeout_s={timeout!r}: expected a positive number of seconds")
    spec = RewardSpec(**{k: merged[k] for k in RewardSpec.option_names()})
    return Options(spec, Taxonomy.load(merged["taxonomy"]), float(timeout))


def _plain(block: Any) -> Any:
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        return block
    return OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else block
