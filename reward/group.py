"""Group rewards: a reward that depends on the other rollouts of the same prompt, as pure functions.

verl 0.9 scores each rollout alone, on whichever reward worker it was sent to, so a reward that
needs its group (a vote, a median, a rank) cannot see it. A ``GroupReward`` describes such a
reward with three functions, and the adapters run it in both verl reward APIs:

- ``contribute(rollout) -> contribution``: runs in the reward worker, once per rollout (parse
  the response, read the row). The contribution must be a small picklable value: it travels
  to wherever the group is gathered.
- ``combine(contributions) -> result``: runs once per group over the contributions gathered
  (in arrival order; make it order-independent). The result is small and picklable too.
- ``reward(own, group, rollout) -> score`` or ``(score, extra_info)``: runs in the reward
  worker, once per rollout, with its own contribution and the ``Group`` (the combined result,
  how many members it holds, and why it was combined when it was). ``extra_info`` is a flat
  {name: number} mapping with the same keys for every rollout: verl 0.9 takes a batch's key
  set from its first rollout and fails on a later one that lacks a key. Declare the keys in
  ``GroupReward(extra_keys=...)``; ``group_info(group)`` gives the group's own keys (members,
  partial and its cause) to add to a reward's.

``reward.group_loop.GroupRewardManager`` (verl's reward loop, ``reward.reward_manager.name``)
and ``reward.group_batch.GroupBatchRewardManager`` (the batch API of verl <= 0.7 forks) are
subclassed with a ``name`` (the config block of options and the board's name) and a
``group_reward`` (a ``GroupReward``, or a function from the options block to one).
Gathering across workers, timeouts, partial groups, validation group sizes, overflow relief,
memory release, the never-raise rule and the one key set of extra info are theirs, not the
description's: ``SafeGroupReward`` holds the two rules both adapters share.
"""

from __future__ import annotations

import logging
import math
import types
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, NamedTuple

logger = logging.getLogger(__name__)

# Rows of these splits are validation rows: their groups have rollout.val_kwargs.n members.
VAL_SPLITS = frozenset({"val", "validation", "test", "eval"})


@dataclass
class Rollout:
    """One rollout as the reward functions see it: the response text and its dataset row.

    ``row`` holds the row's fields the trainer passes along (``data_source``, ``reward_model``,
    ``extra_info``, ``uid``, ...) as they arrive, of any type: read it through the properties
    below, which never raise, or check types yourself.
    """

    row: Mapping[str, Any]
    response: str
    prompt: Any = None

    @property
    def ground_truth(self) -> Any:
        """``reward_model.ground_truth``, or None when the row has no such mapping."""
        model = self.row.get("reward_model")
        return model.get("ground_truth") if isinstance(model, Mapping) else None

    @property
    def extra_info(self) -> Any:
        return self.row.get("extra_info")

    @property
    def validation(self) -> bool:
        return is_validation(self.extra_info)


class Group(NamedTuple):
    """What a rollout's reward sees of its group.

    ``result`` is ``combine``'s output over the contributions gathered; ``members`` the rollouts
    that arrived (those whose ``contribute`` failed included, though they gave nothing to
    combine); ``expected`` the group size; ``partial`` is true when the group was combined
    before all expected members arrived; ``reason`` says why it was combined when it was, so a
    reward can report the cause of a partial group (the causes are ``PARTIAL_REASONS``):

    - ``"complete"``: every expected member arrived (a row without a uid is a complete group of
      itself; the batch API always sees whole groups);
    - ``"timeout"``: ``group_timeout_s`` passed with members missing (partial);
    - ``"overflow"``: combined early to free a reward worker whose call slots all waited (partial);
    - ``"unreachable"``: the vote board failed and the rollout was combined alone (partial);
    - None: no group was needed (``needs_group`` false): ``Group(None, 0, expected, False, None)``.
    """

    result: Any
    members: int
    expected: int
    partial: bool
    reason: str | None


# Why a group was combined before all its members arrived (``Group.reason`` of a partial group).
PARTIAL_REASONS = ("timeout", "overflow", "unreachable")
# What ``group_info`` reports of a rollout's group, each name after a reward's prefix.
GROUP_FIELDS = ("members", "partial", *PARTIAL_REASONS)


def group_keys(prefix: str = "group_") -> tuple[str, ...]:
    """The extra-info keys ``group_info`` writes under ``prefix``, for a reward's ``extra_keys``."""
    return tuple(prefix + field for field in GROUP_FIELDS)


def group_info(group: Group, prefix: str = "group_") -> dict[str, float]:
    """A rollout's group as extra info, for any reward to add to its own.

    ``<prefix>members`` (the members gathered), ``<prefix>partial`` (0/1: combined before all
    expected members arrived) and, 0/1 each, its cause: ``<prefix>timeout``, ``<prefix>overflow``
    and ``<prefix>unreachable`` (see ``Group``); a rollout that needed no group reports 0s.
    ``reward.extra_metrics.group_metrics`` turns these keys into step metrics.
    """
    causes = (group.reason == cause for cause in PARTIAL_REASONS)
    return {key: float(value) for key, value in zip(group_keys(prefix), (group.members, group.partial, *causes))}


@dataclass(frozen=True)
class GroupReward:
    """A group reward as pure functions (see the module docstring).

    ``needs_group(rollout)``, when given, says whether a rollout needs its group at all (false:
    rewarded at once with no group, e.g. a labelled row scored against its label); it must give
    the same answer for every rollout of a prompt. ``group_timeout_s``: how long a group that
    misses members waits, from its first member, before it is combined over those present.
    ``extra_keys``: the keys of the reward's extra info. Every rollout reports exactly these:
    0.0 each for a rollout whose functions raised, and a ``reward`` that returns other keys has
    them made to fit (a missing key 0.0, an unknown one dropped) with a warning. Left empty,
    the keys of the first rollout scored in the process stand for them, with a warning, and a
    rollout that fails before that one reports none.
    """

    contribute: Callable[[Rollout], Any]
    combine: Callable[[list], Any]
    reward: Callable[[Any, Group, Rollout], float | tuple[float, Mapping[str, float]]]
    needs_group: Callable[[Rollout], bool] | None = None
    group_timeout_s: float = 300.0
    extra_keys: tuple[str, ...] = ()


def is_validation(extra_info: Any) -> bool:
    """True for a row of a validation split (``extra_info.split``); any other value is training."""
    split = extra_info.get("split") if isinstance(extra_info, Mapping) else None
    return isinstance(split, str) and split in VAL_SPLITS


def group_key(uid: Any) -> str | None:
    """The group a row belongs to (its ``uid`` as text), or None: the rollout is its own group."""
    if uid is None:
        return None
    if isinstance(uid, str):
        return uid
    try:
        return str(uid)
    except Exception:  # a uid that cannot even be printed (e.g. nested too deep) joins no group
        return None


def option_block(block: Any, defaults: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A config block of options (an OmegaConf node, a mapping or None) merged over ``defaults``.

    An unknown option is an error naming it; an option given as null takes its default.
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(block, DictConfig):
            block = OmegaConf.to_container(block, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        pass
    if block is not None and not isinstance(block, Mapping):
        raise ValueError(f"{name}: expected a mapping of options, got {block!r}")
    given = dict(block or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; known options: {', '.join(defaults)}")
    return {**defaults, **{k: v for k, v in given.items() if v is not None}}


def positive_seconds(value: Any, option: str) -> float:
    """A positive, finite number of seconds (an infinite timeout would hold a group forever)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or value <= 0 or (isinstance(value, float) and not math.isfinite(value)) or value > 1e9:
        raise ValueError(f"{option}={value!r}: expected a positive, finite number of seconds (at most 1e9)")
    return float(value)


def describe(group_reward: GroupReward | Callable[[dict | None], GroupReward], block: Any, name: str) -> GroupReward:
    """The ``GroupReward`` for a config block: built by a function, or a fixed one whose only option
    is ``group_timeout_s``."""
    if isinstance(group_reward, GroupReward):
        options = option_block(block, {"group_timeout_s": group_reward.group_timeout_s}, name)
        return replace(group_reward, group_timeout_s=positive_seconds(options["group_timeout_s"], f"{name}.group_timeout_s"))
    described = group_reward(block)
    if not isinstance(described, GroupReward):
        raise TypeError(f"{name}: group_reward returned {type(described).__name__}, expected a GroupReward")
    positive_seconds(described.group_timeout_s, f"{name}.group_timeout_s")
    return described


class DescribedReward:
    """What both adapters are subclassed with: a ``name`` (the options block, the board's name;
    the class name when empty) and a ``group_reward`` (a ``GroupReward``, or a function from the
    options block to one; a plain function needs no ``staticmethod``)."""

    name: str = ""
    group_reward: GroupReward | Callable[[Any], GroupReward]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        described = cls.__dict__.get("group_reward")
        if isinstance(described, types.FunctionType):  # would otherwise be bound as a method
            cls.group_reward = staticmethod(described)

    @classmethod
    def reward_name(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def described(cls, block: Any) -> GroupReward:
        """The GroupReward for an options block; bad options raise."""
        return describe(cls.group_reward, block, cls.reward_name())


class NoContribution:
    """Stands for the contribution of a member whose ``contribute`` raised: it counts as
    arrived, so its group does not wait for it, but gives nothing to ``combine``."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self):
        return (NoContribution, ())

    def __repr__(self) -> str:
        return "NO_CONTRIBUTION"


NO_CONTRIBUTION = NoContribution()


def combine_safely(combine: Callable[[list], Any], members: list) -> tuple[Any, str | None]:
    """(result, None), or (None, error) when ``combine`` raised: the group still resolves."""
    try:
        return combine([m for m in members if m is not NO_CONTRIBUTION]), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]


class SafeGroupReward:
    """A ``GroupReward``'s functions under the rule that a reward call never raises.

    A rollout whose ``contribute`` raised is sent as ``NO_CONTRIBUTION``; a rollout whose
    group failed to combine, whose ``reward`` raised or returned no finite number is scored
    0.0 with every extra-info key at 0.0, and the failure is logged (the first few times and
    then every thousandth, so a systematic bug is seen without flooding the log). Every
    rollout's extra info has the same keys (``GroupReward.extra_keys``): verl 0.9 needs that.
    """

    def __init__(self, spec: GroupReward, name: str):
        self.spec, self.name = spec, name
        self.keys: tuple[str, ...] = tuple(spec.extra_keys)
        self.key_set = frozenset(self.keys)
        self.failures = 0
        self.warned: set[str] = set()

    def contribute(self, rollout: Rollout) -> Any:
        try:
            return self.spec.contribute(rollout)
        except Exception:
            self.failed("contribute")
            return NO_CONTRIBUTION

    def needs_group(self, rollout: Rollout) -> bool:
        if self.spec.needs_group is None:
            return True
        try:
            return bool(self.spec.needs_group(rollout))
        except Exception:
            self.failed("needs_group")
            return True

    def combine(self, members: list) -> tuple[Any, str | None]:
        result, error = combine_safely(self.spec.combine, members)
        if error is not None:
            self.failed("combine", error)
        return result, error

    def score(self, own: Any, group: Group, rollout: Rollout, error: str | None = None) -> tuple[float, dict]:
        """(score, extra_info) of one rollout; ``error`` is set when its group failed to combine."""
        if own is NO_CONTRIBUTION or error is not None:
            return self.fallback()
        try:
            out = self.spec.reward(own, group, rollout)
            score, info = out if isinstance(out, tuple) else (out, {})
            score = float(score)
            if not math.isfinite(score):
                raise ValueError(f"reward returned {score}")
            info = dict(info)
        except Exception:
            self.failed("reward")
            return self.fallback()
        return score, self.fit(info)

    def fit(self, info: dict) -> dict:
        """``info`` with exactly the reward's keys; a mismatch is warned about once per process."""
        if not self.keys and info:
            self.keys, self.key_set = tuple(info), frozenset(info)
            self.warn_once(
                "undeclared",
                "%s: the reward's extra-info keys are not declared (GroupReward(extra_keys=...)): the keys of its "
                "first rollout scored stand for them, and a rollout that fails before one succeeds in a process reports none",
            )
        if info.keys() == self.key_set:
            return info
        missing, unknown = [k for k in self.keys if k not in info], [k for k in info if k not in self.key_set]
        self.warn_once(
            "mismatch",
            "%s: the reward returned extra-info keys other than its declared ones (verl needs the same keys for "
            "every rollout): missing %s reported as 0.0, unknown %s dropped",
            missing[:5],
            unknown[:5],
        )
        return {key: info.get(key, 0.0) for key in self.keys}

    def warn_once(self, kind: str, message: str, *args: Any) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            logger.warning(message, self.name, *args)

    def fallback(self) -> tuple[float, dict]:
        return 0.0, dict.fromkeys(self.keys, 0.0)

    def failed(self, what: str, error: str | None = None) -> None:
        self.failures += 1
        if self.failures <= 5 or self.failures % 1000 == 0:
            logger.warning(
                "%s: %s failed (%d failures so far); the rollout is scored 0.0%s",
                self.name,
                what,
                self.failures,
                f": {error}" if error else "",
                exc_info=error is None,
            )
