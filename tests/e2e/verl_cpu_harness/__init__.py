"""CPU harness for verl 0.9.1's real trainers: test-only, never installed, never imported by the package.

verl cannot train on a machine without an accelerator out of the box. Importing this package in
every process (``VERL_USE_EXTERNAL_MODULES=verl_cpu_harness``, which ``import verl`` honours in
the trainer, torchrun ranks and every Ray worker) puts the missing pieces in place through verl's
own registries:

- a ``cpu`` platform in ``PlatformRegistry`` (selected by ``VERL_PLATFORM=cpu``): see ``platform``;
- an ``hf`` rollout backend (transformers ``generate``) in ``RolloutReplicaRegistry`` and the
  rollout registry: see ``hf_rollout``;

and one hook outside them, here: verl builds its process-group backend as
``cpu:gloo,<device>:<backend>``, which torch rejects when the device is the CPU too
(``cpu:gloo,cpu:gloo``); on the cpu platform the process group is created with plain ``gloo``.

``runner`` (driver side only) builds the tiny model and runs the trainers as subprocesses.
"""

from __future__ import annotations

import functools
import os
import warnings

from . import platform as _platform  # noqa: F401  (registers the cpu platform)
from .hf_rollout import register as _register_rollout

_register_rollout()


def _gloo_process_groups() -> None:
    """Let verl's process-group initialisers fall back to ``gloo`` on the cpu platform."""
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu":
        return
    from verl.utils import distributed

    def patch(name: str) -> None:
        original = getattr(distributed, name, None)
        if original is None:
            warnings.warn(f"verl.utils.distributed.{name} is gone: the cpu harness cannot set gloo", stacklevel=2)
            return
        if getattr(original, "_cpu_harness", False):
            return
        if name == "initialize_global_process_group_ray":

            @functools.wraps(original)
            def wrapper(timeout_second=None, backend=None):
                return original(timeout_second=timeout_second, backend=backend or "gloo")

        else:  # initialize_global_process_group (torchrun, the SFT trainer)

            @functools.wraps(original)
            def wrapper(timeout_second=36000):
                from datetime import timedelta

                import torch.distributed as dist

                dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout_second))
                return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

        wrapper._cpu_harness = True
        setattr(distributed, name, wrapper)

    patch("initialize_global_process_group_ray")
    patch("initialize_global_process_group")


_gloo_process_groups()
