"""A ``cpu`` platform for verl's ``PlatformRegistry``, selected with ``VERL_PLATFORM=cpu``.

verl 0.9.1 registers cuda, npu and rocm only and falls back to nvidia on a machine without an
accelerator. This platform answers every device question for the host CPU: device ``cpu``,
collectives over gloo, no IPC, profiling and memory management as no-ops. Ray still schedules
verl's workers on a *logical* GPU (``ray_init.num_gpus=1``), so the Ray resource name stays
``GPU``.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Optional

import torch

from verl.plugin.platform import PlatformBase, PlatformRegistry


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda``-style calls verl makes on its device module.

    Memory statistics answer 0, cache and seed calls do nothing (the CPU generator is seeded by
    ``torch.manual_seed``), anything else comes from ``torch.cpu``.
    """

    _ZERO = {"memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"}
    _NOOP = {"empty_cache", "reset_peak_memory_stats", "ipc_collect", "set_per_process_memory_fraction"}

    def __getattr__(self, name: str) -> Any:
        if name in self._ZERO:
            return _zero
        if name in self._NOOP:
            return _noop
        if name == "get_device_name":
            return lambda *a, **k: "CPU"
        if name == "mem_get_info":
            return lambda *a, **k: (0, 0)
        if name in ("manual_seed", "manual_seed_all"):
            return lambda seed: torch.manual_seed(seed)
        return getattr(torch.cpu, name)


CPU_DEVICE_MODULE = _CPUDeviceModule("verl_cpu_harness.device")


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """The host CPU as verl's device."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:
        # verl moves tensors with ``.to(get_device_id())``: an index would mean an accelerator.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
