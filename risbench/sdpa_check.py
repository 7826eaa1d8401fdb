"""Which kernel `F.scaled_dot_product_attention` takes for the model's attention shapes, with and without
the text padding mask (issue 17: a boolean mask can keep SDPA off its flash kernel).

`sdpa_backends` asks each backend alone (`torch.nn.attention.sdpa_kernel`) whether it accepts the inputs;
`dispatched` records, with the torch profiler, which aten kernel the default dispatch ran.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
KERNEL_NAMES = {  # aten op of each backend, as the profiler names it
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_attention_math": "math",
    "_scaled_dot_product_fused_attention_overrideable": "fused (overrideable)",
}


def sdpa_backends(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> dict[str, str]:
    """For each backend alone: 'ok' or why it refuses these inputs (torch's warnings that name the reason,
    else the error's first line)."""
    out = {}
    for name, backend in BACKENDS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([backend]):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                out[name] = "ok"
            except RuntimeError as exc:
                reasons = [str(w.message).strip().splitlines()[0] for w in caught]
                out[name] = "; ".join(reasons) or str(exc).strip().splitlines()[0]
    return out


def dispatched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> str:
    """The backend the default dispatch runs for these inputs (from the profiler's aten op names)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    names = [e.key for e in prof.key_averages()]
    for name in names:
        for op, backend in KERNEL_NAMES.items():
            if op in name:
                return backend
    return "unknown: " + ", ".join(n for n in names if "attention" in n)


def check_attention(
    batch: int, heads: int, tokens: int, head_dim: int, text_len: int, padded: int, device: torch.device, dtype
) -> dict[str, Any]:
    """The kernels for a joint sequence of `tokens` keys whose last `text_len` are text, `padded` of them
    padding: with the boolean key mask, with the same mask as an additive float mask, and with no mask."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    keep = torch.ones(batch, tokens, dtype=torch.bool)
    if padded:
        keep[:, tokens - padded :] = False
    bool_mask = keep[:, None, None, :].to(device)
    float_mask = torch.zeros(bool_mask.shape, dtype=dtype, device=device).masked_fill(~bool_mask, float("-inf"))
    cases = {"bool mask": bool_mask, "additive float mask": float_mask, "no mask": None}
    return {
        "shape": {"batch": batch, "heads": heads, "tokens": tokens, "head_dim": head_dim, "padded": padded},
        "dtype": str(dtype).removeprefix("torch."),
        "cases": {
            name: {"dispatched": dispatched(q, k, v, m), "backends": sdpa_backends(q, k, v, m)}
            for name, m in cases.items()
        },
    }
