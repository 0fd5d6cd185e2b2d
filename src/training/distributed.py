"""Multi-process training under torchrun: process group set-up and rank helpers.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them everything runs as a single process.
NCCL joins the processes on GPUs, gloo on CPU.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """torchrun asked for something this machine cannot give (more GPU processes than GPUs)."""


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Average a Python number over all ranks."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size


def setup_distributed(device: str) -> DistributedContext:
    """Join the torchrun process group when WORLD_SIZE > 1; returns the single-process context otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:  # else CUDA's bare "invalid device ordinal" traceback, one per rank
            raise DistributedError(
                f"torchrun started process {local_rank} of this node but the machine has {gpus} GPU(s): "
                f"use --nproc_per_node={gpus} (one process per GPU), or --device cpu for gloo on the CPU"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank, local_rank, world_size)


def distributed_device(context: DistributedContext, device: str) -> str:
    """Each rank takes its own GPU; on CPU all ranks share the CPU."""
    if context.enabled and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{context.local_rank}"
    return device


def cleanup_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
