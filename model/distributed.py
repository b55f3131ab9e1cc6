"""Data-parallel training across processes: the same script with or without ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``/``LOCAL_WORLD_SIZE``; without them the run is
one process and nothing here does anything. With them, every rank reads the whole file (so every rank
builds the same id maps, and rank 0 the checkpoint's seen items), runs the same epochs over the same
shuffled order, and takes its own slice of every batch (:meth:`Cluster.shard`); PyTorch's
``DistributedDataParallel`` averages the gradients, so a step equals a single process's step on the
whole batch. Validation runs on every rank on identical weights, so early stopping decides alike
everywhere; rank 0 alone writes.

Gradients of the embedding tables are dense (``nn.Embedding(sparse=False)``): DDP all-reduces a sparse
gradient only when every rank produced one, and a rank whose slice touched no row of a table would not,
which deadlocks or fails; every parameter takes part in every step, so ``find_unused_parameters`` stays off.
The closed-form ALS engine is not distributed: under ``torchrun`` the engine is gradient descent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from model.cpus import available_cpus


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (``world == 1``: a plain single process)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a batch of row (or user) indices: every ``world``-th, from ``rank``."""
        return batch[self.rank :: self.world] if self.distributed else batch

    def runs(self, batch_len: int) -> bool:
        """Whether every rank gets a row of a batch of ``batch_len`` (a shorter tail batch is skipped by all)."""
        return batch_len >= self.world

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel when distributed (gradients averaged in backward)."""
        if not self.distributed:
            return module
        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # The loss modules' buffers (per-row weights) are the same on every rank: synced once at init (torch
        # 2.13 always does), never again per forward.
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


SINGLE = Cluster()


def from_env() -> Cluster:
    """The cluster ``torchrun`` describes in the environment (a single process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Cluster(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def start(cluster: Cluster, device: torch.device) -> None:
    """Join the process group: NCCL for CUDA (one GPU per local rank), gloo on CPU."""
    if not cluster.distributed:
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def finish(cluster: Cluster) -> None:
    """Wait until every rank is done (rank 0 writes the checkpoint while the others would already leave).

    Called after a successful run only, so that no rank tears its connections down while another still holds
    them open: the ranks then leave the group together (:func:`stop`). A rank that fails (an exception, or an
    error code such as a divergence its own slice of a batch saw) leaves at once: a barrier there could meet a
    collective the others are still in, and ``torchrun`` stops the rest.
    """
    if cluster.distributed and dist.is_initialized():
        # NCCL needs this rank's device (start() set it), or it guesses and warns.
        ids = [torch.cuda.current_device()] if dist.get_backend() == "nccl" else None
        dist.barrier(device_ids=ids)


def stop(cluster: Cluster) -> None:
    if cluster.distributed and dist.is_initialized():
        dist.destroy_process_group()


def threads_per_process(cluster: Cluster) -> int:
    """Torch threads for one process: the cores this process may use (affinity and cgroup quota), shared among
    the local ranks."""
    return max(1, available_cpus() // cluster.local_world)
