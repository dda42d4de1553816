"""Data-parallel training under ``torchrun`` (PyTorch DDP): gloo on the CPU, NCCL on CUDA.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them the world has one
process and every helper here returns at once, so single-process training pays nothing.
Rank 0 owns the output folder (lock, job, events, validation, checkpoints, logit statistics);
every rank samples its own patches and DDP averages the gradients. The small collectives
below keep the ranks in step: a stop request or a NaN seen by one rank stops all of them at
the same iteration, and an input error found by rank 0 reaches the others instead of leaving
them waiting.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

if TYPE_CHECKING:  # torch is imported by the functions that use it: the CLI's --help stays fast
    import torch
    from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_environment() -> World:
    """The torchrun world of this process (a world of one outside torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0"))) if size > 1 \
        else World()


def start(world: World, device: "torch.device") -> "torch.device":
    """Join the process group (once) and return this rank's device (its own GPU under CUDA)."""
    if not world.distributed:
        return device
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(world: World, flag: bool, device: "torch.device") -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not world.distributed:
        return bool(flag)
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(world: World, value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def data_parallel(model: "nn.Module", world: World, device: "torch.device") -> "nn.Module":
    """The model that training steps run through: DDP across the world, the model itself otherwise.

    The adversarial direction and validation use the underlying module, so they never start a
    gradient all-reduce.
    """
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def error_message(world: World, error: Optional[BaseException]) -> Optional[str]:
    """Rank 0's error message on every rank (None when rank 0 had none)."""
    return from_main(world, None if error is None else str(getattr(error, "message", error)))


def on_main(world: World, fn: Callable[[], T], what: str) -> T:
    """``fn()`` run by rank 0 and its result on every rank. An AsymSegError of rank 0 is raised there and, as an
    InputError starting with ``what``, on the other ranks (instead of leaving them waiting)."""
    from .errors import AsymSegError, InputError

    error = result = None
    if world.main:
        try:
            result = fn()
        except AsymSegError as exc:
            error = exc
    message = error_message(world, error)
    if error is not None:
        raise error
    if message is not None:
        raise InputError(f"{what}: {message}", "See the error of rank 0.")
    return from_main(world, result)
