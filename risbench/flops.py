"""Parameter and FLOP counts with fvcore, the way the Shared-RIS paper reports them.

Convention: fvcore counts one fused multiply-add as one flop, so "GFLOPs" here are really GMACs; every
output says so. fvcore has no handle for `aten::scaled_dot_product_attention` or `aten::baddbmm` and
would silently skip them; we register handles that count them exactly as the explicit matmuls
(q @ k^T, then attn @ v) would be counted, and 2-operand einsums are counted exactly (fvcore's own
handle goes through `numpy.einsum_path`, whose printout rounds to 4 significant digits; 3+ operands
still use it).

What is traced: the model in eval mode under `torch.no_grad`, returning only the inference output
(`DecoderOutput.logits`), so training-only branches (auxiliary heads) add nothing to the FLOPs while
their parameters still count in `params` (that is how the paper's DMMI row comes out).

Inputs: one random image (B, 3, S, S) and text ids (B, text_len) with no padding. `text_len` is the
full tokenised length the model sees, including the <s> and </s> (or [CLS]/[SEP]) tokens.

An op fvcore does not count is listed in `uncounted_ops`; if it is a heavy one (matmul-, conv-,
linear-, einsum- or attention-like) `measure` raises instead, because the total would be wrong.
"""

from __future__ import annotations

import logging
from collections import Counter
from math import prod
from typing import Any

import torch
from torch import Tensor, nn

from risbench.errors import RisbenchError

CONVENTION = "fvcore: one multiply-add = one flop"
COMPONENTS = ("encoder", "fpn", "decoder")
OPTIONAL_COMPONENTS = ("existence",)  # counted as a component when the model has one


def components_of(model: nn.Module) -> tuple[str, ...]:
    """The components `model` has: the three, then the optional ones it holds (an existence head)."""
    return (*COMPONENTS, *(n for n in OPTIONAL_COMPONENTS if getattr(model, n, None) is not None))


# fvcore logs "Unsupported operator ..." and "never called" warnings through these loggers; we turn
# those warnings off on the analysis object and report the ops ourselves (`uncounted_ops`).
_FVCORE_LOGGERS = ("fvcore.nn.jit_analysis", "fvcore.common.checkpoint")


# ------------------------------------------------------------------------------------------ handles


def _shape(value: Any) -> list[int]:
    """Static shape of a traced value (torch._C.Value); raises when the trace did not record one."""
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(value)
    if shape is None:
        raise RisbenchError(f"flops: the trace has no static shape for {value.debugName()} ({value.type()})")
    return list(shape)


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """`aten::scaled_dot_product_attention(q, k, v, ...)`: QK^T plus AV multiply-adds.

    q (..., Nq, E), k (..., Nk, E), v (..., Nk, Ev), out (..., Nq, Ev): the score matmul is
    prod(q.shape[:-1]) * Nk * E and the value matmul prod(out.shape[:-1]) * Nk * Ev, exactly what
    fvcore's matmul handle gives `q @ k.transpose(-2, -1)` and `attn @ v`. The softmax, the scale and
    the mask are not counted, as they are not for the explicit form. Broadcast batch dims (grouped
    query attention) are read from q and the output, like the explicit matmuls would see them.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    out = _shape(outputs[0])
    nk = k[-2]
    flops = prod(q[:-1]) * nk * q[-1] + prod(out[:-1]) * nk * v[-1]
    return Counter({"scaled_dot_product_attention": flops})


def baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """`aten::baddbmm(self, batch1, batch2, beta, alpha)`: counted like `bmm(batch1, batch2)`."""
    b, n, c = _shape(inputs[1])
    d = _shape(inputs[2])[-1]
    return Counter({"bmm": b * n * c * d})


def einsum_flop_jit(inputs: list[Any], outputs: list[Any]) -> Any:
    """`aten::einsum`: exact for two operands (one multiply-add per combination of all indices,
    which is what fvcore's special-cased equations give), fvcore's own handle otherwise."""
    from fvcore.nn.jit_handles import einsum_flop_jit as fvcore_einsum

    equation = inputs[0].toIValue().replace(" ", "")
    operands = list(inputs[1].node().inputs())
    lhs = equation.split("->")[0].split(",")
    if len(operands) != 2 or len(lhs) != 2 or "." in equation:
        return fvcore_einsum(inputs, outputs)
    sizes: dict[str, int] = {}
    for letters, value in zip(lhs, operands, strict=True):
        shape = _shape(value)
        if len(shape) != len(letters):
            return fvcore_einsum(inputs, outputs)
        for letter, size in zip(letters, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)
    return Counter({"einsum": prod(sizes.values())})


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::baddbmm": baddbmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
}

_HEAVY_WORDS = ("attention", "conv", "matmul", "einsum", "linear", "tensordot", "lstm", "gru", "rnn", "fft")
_HEAVY_NAMES = {"mv", "addmv", "dot", "vdot", "outer", "inner", "ger", "_addmm_activation", "kron"}


def is_heavy(op: str) -> bool:
    """Whether an uncounted op can carry a large share of the cost (so leaving it out is an error):
    anything matmul-, conv-, linear-, einsum- or attention-like, and opaque calls (Python autograd
    functions, scripted functions) whose cost cannot be seen. Upsampling is not heavy."""
    if op.startswith(("prim::PythonOp", "prim::CallFunction", "prim::CallMethod")):
        return True
    name = op.split("::", 1)[-1].lower().rstrip("_")
    if name.startswith("upsample"):
        return False
    return name.endswith("mm") or name in _HEAVY_NAMES or any(word in name for word in _HEAVY_WORDS)


# -------------------------------------------------------------------------------------------- measure


class _LogitsOnly(nn.Module):
    """Traced wrapper: the Segmenter's forward, returning only the inference output (the logits)."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor) -> Tensor:
        return self.segmenter(image, text_ids, text_pad_mask).logits


def make_inputs(model: nn.Module, image_size: int, text_len: int, batch_size: int = 1) -> tuple[Tensor, ...]:
    """A random image (B, 3, S, S), random text ids (B, text_len) and an all-False padding mask."""
    if image_size < 1 or text_len < 1 or batch_size < 1:
        raise RisbenchError(
            f"flops: image size, text length and batch size must be positive, got {image_size}, "
            f"{text_len}, {batch_size}"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    vocab = int(getattr(model.encoder, "vocab_size", 0) or 1000)
    image = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device, dtype)
    ids = torch.randint(0, vocab, (batch_size, text_len), generator=gen).to(device)
    pad = torch.zeros(batch_size, text_len, dtype=torch.bool, device=device)
    return image, ids, pad


def flop_analysis(module: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """An fvcore FlopCountAnalysis with our handles, fvcore's own log warnings off (we report them)."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def count_flops(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Counter, Counter]:
    """(flops by module name, uncounted ops) of one traced call; raises on a heavy uncounted op.

    The module is traced as it is (mode and grad state are the caller's business)."""
    analysis = flop_analysis(module, inputs)
    with _quiet_fvcore():
        by_module = analysis.by_module()
        uncounted = Counter(analysis.unsupported_ops())
    heavy = sorted(op for op in uncounted if is_heavy(op))
    if heavy:
        raise RisbenchError(
            f"flops: fvcore has no handle for {', '.join(heavy)} (a heavy op): the count would be too low; "
            "register a handle in risbench/flops.py (EXTRA_HANDLES) or write the op with a counted one"
        )
    return by_module, uncounted


def measure(model: nn.Module, image_size: int, text_len: int, batch_size: int = 1) -> dict[str, Any]:
    """Params and FLOPs of a Segmenter, per component (encoder / fpn / decoder, and the existence head when
    there is one) and in total.

    `image_size`: the square input side in pixels; `text_len`: the full tokenised length the model
    sees (including <s> and </s>); no padding. Traces the inference output only, in eval mode under
    no_grad (the model's mode is restored afterwards). Returns a JSON-ready dict.
    """
    was_training = model.training
    model.eval()
    try:
        inputs = make_inputs(model, image_size, text_len, batch_size)
        with torch.no_grad():
            by_module, uncounted = count_flops(_LogitsOnly(model), inputs)
    finally:
        model.train(was_training)

    components: dict[str, dict[str, int]] = {}
    for name in components_of(model):
        part = getattr(model, name)
        components[name] = {
            "params": sum(p.numel() for p in part.parameters()),
            "flops": int(by_module.get(f"segmenter.{name}", 0)),
        }
    params = list(model.parameters())  # unique tensors (tied weights counted once)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total_params = sum(p.numel() for p in params)
    total_flops = int(by_module.get("", 0))
    outside = total_flops - sum(c["flops"] for c in components.values())
    result: dict[str, Any] = {
        "model": _model_name(model),
        "input": {"image_size": image_size, "text_len": text_len, "batch_size": batch_size},
        "components": components,
        "total": {
            "params": total_params,
            "trainable_params": trainable,
            "frozen_params": total_params - trainable,
            "flops": total_flops,
        },
        "uncounted_ops": dict(sorted(uncounted.items())),
        "convention": CONVENTION,
        "text_len_note": "text_len is the full tokenised length the model sees, including <s> and </s>; no padding",
        "weights": getattr(model, "weights", "random"),
    }
    if outside:
        # ops in the Segmenter's own forward, outside the three components (none today)
        result["components"]["other"] = {"params": 0, "flops": outside}
    result["parts"] = part_rows(model, by_module)
    enc = [p for p in model.encoder.parameters()]
    enc_trainable = sum(p.numel() for p in enc if p.requires_grad)
    enc_frozen = sum(p.numel() for p in enc if not p.requires_grad)
    if enc_frozen and enc_trainable:
        # PEFT: what trains inside the encoder (adapters) relative to its frozen backbone
        result["encoder_trainable_share_of_frozen"] = enc_trainable / enc_frozen
    return result


def part_rows(model: nn.Module, by_module: Counter) -> list[dict[str, Any]]:
    """Params (total / trainable / frozen) and FLOPs per part: a component's `flop_parts()` ({label: sub-module
    path}) or the whole component. A part nested inside another (vision.adapters in vision) is taken out of it."""
    rows = []
    for name in components_of(model):
        comp = getattr(model, name)
        parts = comp.flop_parts() if hasattr(comp, "flop_parts") else {name: ""}
        paths = list(parts.values())
        for label, path in parts.items():
            inner = [q for q in paths if q != path and (path == "" or q.startswith(path + "."))]
            mod = comp.get_submodule(path) if path else comp
            skip = {id(p) for q in inner for p in comp.get_submodule(q).parameters()}
            ps = [p for p in mod.parameters() if id(p) not in skip]
            key = f"segmenter.{name}" + (f".{path}" if path else "")
            flops = by_module.get(key, 0) - sum(by_module.get(f"segmenter.{name}.{q}", 0) for q in inner)
            rows.append(
                {
                    "component": name,
                    "part": label,
                    "params": sum(p.numel() for p in ps),
                    "trainable_params": sum(p.numel() for p in ps if p.requires_grad),
                    "flops": int(flops),
                }
            )
    return rows


def _model_name(model: nn.Module) -> Any:
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict):
        return {k: spec[k] for k in COMPONENTS if k in spec} or type(model).__name__
    return type(model).__name__


class _quiet_fvcore:
    """Raise fvcore's loggers to ERROR for the duration (their warnings are reported by us instead)."""

    def __enter__(self) -> None:
        self._levels = {}
        for name in _FVCORE_LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------------------- formatting


def millions(n: float) -> float:
    return n / 1e6


def giga(n: float) -> float:
    return n / 1e9


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per component plus the total: component, params_m, gflops."""
    rows = [
        {"component": name, "params_m": millions(c["params"]), "gflops": giga(c["flops"])}
        for name, c in result["components"].items()
    ]
    total = result["total"]
    rows.append({"component": "total", "params_m": millions(total["params"]), "gflops": giga(total["flops"])})
    return rows
