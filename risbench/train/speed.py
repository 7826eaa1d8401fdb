"""Speed switches of the training step (`train.speed`): how a step runs, never what it computes.

Each switch is `null` (auto: its default for the device, docs/decisions.md §17) or an explicit value.
Auto turns on, on CUDA only, the switches that change no result (fused AdamW, no per-step host sync,
pinned memory); the others are off until `scripts/gpu_bench.py` measures each alone on a GPU. On CPU every
auto switch is off, so CPU results are the same with or without this section. The section is left out of
run hashes (`VOLATILE_KEYS`), like `num_workers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # aot_eager: graph capture + AOTAutograd, no codegen


@dataclass
class SpeedConfig:
    """`train.speed`: speed switches (null = auto for the device)."""

    compile: bool = False  # torch.compile the model (the step's forward and backward)
    compile_loss: bool = False  # torch.compile the loss too
    compile_mode: str = "default"  # inductor's mode
    compile_backend: str = "inductor"
    fused_adamw: bool | None = None  # torch's fused AdamW/Adam kernel; auto = on CUDA
    channels_last: bool = False  # 4-d weights (the decoder's and FPN's convs) and their inputs NHWC
    drop_unpadded_mask: bool = False  # no attention mask for a batch without padded text (checked on host)
    host_sync: str | None = None  # "step": loss .item() and finite check each step; "log": every log_every
    activation_checkpointing: bool = False  # recompute encoder blocks in backward (memory for time)
    pin_memory: bool | None = None  # auto = on CUDA; never on CPU (nothing to copy to)
    prefetch_factor: int | None = None  # batches each worker loads ahead (needs num_workers > 0)
    persistent_workers: bool = False  # keep workers between the epoch's iterations (needs num_workers > 0)

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got '{self.compile_mode}'")
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ValueError(
                f"compile_backend must be one of {', '.join(COMPILE_BACKENDS)}, got '{self.compile_backend}'"
            )
        if self.host_sync not in (None, "step", "log"):
            raise ValueError(f"host_sync must be step, log or null (auto), got '{self.host_sync}'")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1 (or null), got {self.prefetch_factor}")


def use_fused(speed: SpeedConfig, device: torch.device) -> bool:
    """Whether the optimizer takes torch's fused kernel (auto: on CUDA)."""
    return device.type == "cuda" if speed.fused_adamw is None else bool(speed.fused_adamw)


def sync_every_step(speed: SpeedConfig, device: torch.device) -> bool:
    """Whether the step syncs with the host (finite check, loss value) every step (auto: on CPU only)."""
    return device.type != "cuda" if speed.host_sync is None else speed.host_sync == "step"


def loader_options(speed: SpeedConfig, device: torch.device, num_workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments for the speed switches (prefetch/persistence only with workers)."""
    pin = device.type == "cuda" and speed.pin_memory is not False  # pinning needs a device to copy to
    opts: dict[str, Any] = {"pin_memory": pin}
    if num_workers > 0:
        opts["persistent_workers"] = speed.persistent_workers
        if speed.prefetch_factor is not None:
            opts["prefetch_factor"] = speed.prefetch_factor
    return opts


def prepare_model(model: nn.Module, speed: SpeedConfig) -> nn.Module:
    """In place, before the optimizer and DDP: channels_last weights, checkpointed encoder blocks."""
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    if speed.activation_checkpointing:
        checkpoint_blocks(model.encoder)
    return model


def compile_step_model(model: nn.Module, speed: SpeedConfig) -> nn.Module:
    """The module the step calls: `torch.compile(model)` when switched on (after DDP wrapping), else `model`."""
    return _compile(model, speed) if speed.compile else model


def compile_loss(loss_fn: nn.Module, speed: SpeedConfig) -> nn.Module:
    """The loss the step calls (compiled when `compile_loss`)."""
    return _compile(loss_fn, speed) if speed.compile_loss else loss_fn


def _compile(module: nn.Module, speed: SpeedConfig) -> nn.Module:
    if speed.compile_backend == "inductor":
        return torch.compile(module, mode=speed.compile_mode)
    return torch.compile(module, backend=speed.compile_backend)


def checkpoint_blocks(module: nn.Module) -> int:
    """Make every element of the outermost ModuleLists under `module` (an encoder's or tower's layers)
    recompute its activations in backward (torch.utils.checkpoint, non-reentrant; the RNG state is restored
    for the recomputation, so stochastic depth drops the same samples). Only the instance's `forward` is
    replaced: parameters and state-dict keys stay as they are. Returns how many blocks."""
    count = 0
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                if getattr(block, "_checkpointed", False) or not any(p.requires_grad for p in block.parameters()):
                    continue
                block.forward = _checkpointed(block.forward)
                block._checkpointed = True
                count += 1
        else:
            count += checkpoint_blocks(child)
    return count


def _checkpointed(forward: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run
