"""One run = one process group: setup, the global batch sampler, gather / broadcast helpers.

`torchrun --standalone --nproc-per-node K -m risbench.cli.launch CONFIG`
(or `risbench train CONFIG` under torchrun) starts K processes; they find RANK / WORLD_SIZE /
LOCAL_RANK in the environment. gloo on CPU, nccl on GPU; with world size 1 there is no process group
and no DDP wrapper. Only rank 0 writes files.

Batches: `GlobalBatchSampler` draws the GLOBAL batch of each step from a permutation that depends only
on (seed, epoch), and gives rank r the r-th contiguous slice of it, so K processes see exactly the
samples one process would. On CPU BatchNorm normalises with per-process statistics (SyncBatchNorm is
CUDA-only in torch), so a K-process CPU run matches a single-process run only approximately while the
model has BatchNorm layers in training mode; on CUDA the trainer converts BN to SyncBatchNorm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from risbench.train.config import TrainConfig


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str | None = None) -> DistInfo:
    """Read the torchrun environment, pick the device, and start the process group when world > 1."""
    world = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device in (None, "auto") else str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Mean of scalar floats over ranks (for logging losses)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    t /= info.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Per-rank index lists for one epoch: the epoch's permutation (seeded by seed and epoch) cut into
    global batches of `global_batch` (the last partial one dropped when `drop_last`), each split into
    `world_size` contiguous slices; `start_batch` skips batches already trained (resume)."""

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        start_batch: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.start_batch = start_batch

    def global_batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        n = len(order) // self.global_batch if self.drop_last else -(-len(order) // self.global_batch)
        return [order[i * self.global_batch : (i + 1) * self.global_batch] for i in range(n)]

    def __iter__(self):
        for batch in self.global_batches()[self.start_batch :]:
            yield batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def __len__(self) -> int:
        return max(0, len(self.global_batches()) - self.start_batch)


def wrap_ddp(model: nn.Module, tcfg: TrainConfig, info: DistInfo) -> nn.Module:
    """The model for training: SyncBatchNorm when asked (default: DDP on CUDA), in DDP when distributed."""
    sync_bn = tcfg.sync_bn if tcfg.sync_bn is not None else (info.enabled and info.device.type == "cuda")
    if sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not info.enabled:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=tcfg.find_unused_parameters,
        # static graph: tolerates parameters that never get a gradient (BEiT-3's MIM mask_token)
        # without the per-step search of find_unused_parameters
        static_graph=not tcfg.find_unused_parameters,
    )
