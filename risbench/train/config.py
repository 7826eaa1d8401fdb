"""The run config: what one training run is (model, data, tokenizer, recipe, evaluation, seed).

A run config is plain YAML validated into `RunConfig`. `model` and `data` are a preset name, or a
mapping; a model mapping may name a `preset:` and override sections of it
(`model: {preset: shared-ris-tiny, fpn: {dim: 64}}`). `resolve_run_config` turns the raw dict into the
fully resolved dict written to `run_dir/config.yaml`: the model becomes its complete spec, so a run
does not change when a preset file does.

Batch size: `train.batch_size` is the GLOBAL batch (summed over all processes of a torchrun group);
each process takes `batch_size / world_size` samples per step, so a run gives the same optimisation
trajectory on 1 or K processes (up to BatchNorm statistics on CPU; see risbench/train/distributed.py).
The paper's "14 x 8 V100" is therefore `batch_size: 112` here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from risbench.config import to_dataclass, to_dict
from risbench.data.build import dataset_class_and_config, resolve_data_config
from risbench.registry import LOSSES
from risbench.spec import apply_overrides, resolve_model
from risbench.train.precision import AMP_MODES
from risbench.train.speed import SpeedConfig

SCHEDULES = ("cosine", "linear", "constant", "poly")  # progress-driven (pretraining's too)
RUN_SCHEDULES = (*SCHEDULES, "step")  # step: x gamma at each epoch in `milestones` (MultiStepLR)
OPTIMIZERS = ("adamw", "adam")
RESOLUTIONS = ("original", "input")
# Keys whose value does not change what a run computes: ignored when deciding whether a finished or
# interrupted run in the same directory is "the same run".
VOLATILE_KEYS = (
    ("run_dir",),
    ("train", "num_workers"),
    ("train", "log_every"),
    ("train", "nproc_per_node"),
    ("train", "threads"),
    ("train", "speed"),  # how a step runs (risbench/train/speed.py), not what it computes
    ("description",),
)
# Recipe keys added after runs were made: left out of the comparison (and so of run hashes) while they hold
# these values, so that a config written before them still names the same run.
LATER_DEFAULTS = {
    ("train", "optimizer"): "adamw",
    ("train", "milestones"): [],
    ("train", "gamma"): 0.1,
    ("train", "lr_mult"): {},
    ("train", "kind_weights"): {},
    ("train", "loss", "existence_weight"): 1.0,
    ("train", "loss", "negative_weight"): 1.0,
}
# `train.loss` keys that belong to the trainer, not to the LOSSES entry (they sit beside its options)
LOSS_TRAINER_KEYS = ("existence_weight", "negative_weight")


@dataclass
class LossConfig:
    """`train.loss`: a LOSSES registry name plus that loss's own options (e.g. bce_weight), and two weights the
    trainer applies around it: `existence_weight` on the existence head's BCE (models with a head only) and
    `negative_weight` on the loss of negative sentences (empty targets) relative to positives'."""

    name: str = "bce_dice"
    options: dict = field(default_factory=dict)
    existence_weight: float = 1.0
    negative_weight: float = 1.0  # 1.0: every sample counts alike (the loss is unchanged)

    def __post_init__(self) -> None:
        for key in LOSS_TRAINER_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{key} must be a number >= 0, got {value!r}")
            setattr(self, key, float(value))


@dataclass
class TrainConfig:
    """The optimisation recipe. Defaults are the paper's (docs/decisions.md §5)."""

    epochs: int = 35
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule spans them)
    max_minutes: float | None = None  # wall-clock budget for training (eval excluded); see trainer docs
    batch_size: int = 112  # GLOBAL batch over all processes; per process = batch_size / world_size
    lr: float = 1e-4
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    optimizer: str = "adamw"  # adamw (decoupled decay) | adam (L2 decay in the gradient, torch.optim.Adam)
    warmup_steps: int = 0
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)  # schedule step: epochs at which lr *= gamma
    gamma: float = 0.1
    min_lr: float = 0.0
    # module prefix -> multiplier of lr (e.g. {encoder: 0.1}: CRIS's lr_multi for the backbone); longest prefix wins
    lr_mult: dict[str, float] = field(default_factory=dict)
    # sentence kind -> weight of drawing it among its ref's sentences in training ({shape: 4}: a ref's
    # shape-only sentence 4x as often as each other one); kinds as the dataset names them (SynthRef: word kinds)
    kind_weights: dict[str, float] = field(default_factory=dict)
    clip_grad: float | None = 1.0  # max L2 norm of all gradients; null = off
    loss: LossConfig = field(default_factory=LossConfig)
    num_workers: int = 0
    log_every: int = 10
    val_every: int | None = None  # steps between validations on eval.val_split; null = each epoch end
    ckpt_every: int | None = None  # steps between last.pt saves; null = at each validation and the end
    val_max_samples: int | None = None  # cap on validation samples during training (final eval: all)
    amp: str | bool = "auto"  # auto (bf16 on CUDA) | bf16 | bf16_if_native | off: risbench/train/precision.py
    sync_bn: bool | None = None  # null = SyncBatchNorm when running DDP on CUDA (not possible on CPU)
    find_unused_parameters: bool = False
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn only on CUDA)
    threads: int | None = None  # torch intra-op threads per process; null = torch's default
    # processes (GPUs) the recipe was written for; informational (launch lines), batch_size stays global
    nproc_per_node: int | None = None
    speed: SpeedConfig = field(default_factory=SpeedConfig)  # speed switches (risbench/train/speed.py)

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):
            self.amp = "auto" if self.amp else "off"
        if self.schedule not in RUN_SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(RUN_SCHEDULES)}, got '{self.schedule}'")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{self.optimizer}'")
        self.milestones = [int(m) for m in self.milestones]
        if (self.schedule == "step") != bool(self.milestones):
            raise ValueError(f"milestones go with schedule step (and it needs them); got {self.milestones}")
        if any(m < 1 for m in self.milestones) or sorted(set(self.milestones)) != self.milestones:
            raise ValueError(f"milestones must be increasing epochs >= 1, got {self.milestones}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got '{self.amp}'")
        if self.batch_size < 1 or self.epochs < 0:
            raise ValueError("batch_size must be >= 1 and epochs >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or null: the epochs decide), got {self.max_steps}")
        if not self.lr > 0 or self.min_lr < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"need lr > 0, min_lr >= 0, weight_decay >= 0 and warmup_steps >= 0; got lr {self.lr}, "
                f"min_lr {self.min_lr}, weight_decay {self.weight_decay}, warmup_steps {self.warmup_steps}"
            )
        for prefix, value in self.lr_mult.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"lr_mult['{prefix}'] must be a number >= 0, got {value!r}")
        for kind, value in self.kind_weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"kind_weights['{kind}'] must be a number >= 0, got {value!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0 (or null: no clipping), got {self.clip_grad}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0 (or null), got {self.max_minutes}")


def check_threshold(value: float, where: str) -> None:
    """A mask threshold on sigmoid probabilities must lie in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{where} must be in [0, 1) (a probability; foreground when sigmoid > it), got {value}")


@dataclass
class EvalConfig:
    """Evaluation: which splits, at what threshold and resolution (docs/decisions.md §6)."""

    splits: list[str] = field(default_factory=lambda: ["val"])
    val_split: str | None = "val"  # chooses checkpoints/best.pt (by oIoU); null = no validation
    threshold: float = 0.35  # a pixel is foreground when sigmoid(logit) > threshold
    resolution: str = "original"  # original = unmapped to the image's own size; input = S x S grid
    batch_size: int = 32  # global, like train.batch_size
    checkpoint: str = "last"  # which weights the final metrics come from: last | best

    def __post_init__(self) -> None:
        check_threshold(self.threshold, "threshold")
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got '{self.resolution}'")
        if self.checkpoint not in ("last", "best"):
            raise ValueError(f"checkpoint must be last or best, got '{self.checkpoint}'")


@dataclass
class TokenizerConfig:
    """Tokenizer: a file/dir on disk (`path`), else one trained on the training expressions and cached."""

    path: str | None = None
    max_len: int = 20
    vocab_size: int | None = None  # null = the encoder's vocab_size
    cache_dir: str | None = None  # null = <project>/.cache/tokenizers


@dataclass
class RunConfig:
    """One training run."""

    model: Any = "shared-ris-b"
    data: Any = "synthref"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    run_dir: str | None = None
    description: str | None = None


def normalize_raw(cfg: dict[str, Any]) -> dict[str, Any]:
    """Make a raw config ready for `--set`: string `model`/`data` become `{preset: name}` so that
    `--set model.fpn.dim=64` refines the preset instead of replacing it; `train.loss` options are
    accepted flat (`loss: {name: bce_dice, bce_weight: 2.0}`)."""
    out = copy.deepcopy(cfg)
    for key in ("model", "data"):
        if isinstance(out.get(key), str):
            out[key] = {"preset": out[key]}
    return out


def apply_run_overrides(cfg: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """`--set` on a run config (`risbench.spec.apply_overrides`). The sections exist beforehand, so that
    `train.lr=...` sets a default field and `model.fpn.dim=...` refines the model preset."""
    out = normalize_raw(cfg)
    out.setdefault("model", {"preset": RunConfig.model})
    out.setdefault("data", {"preset": RunConfig.data})
    for section in ("train", "eval", "tokenizer"):
        out.setdefault(section, {})
    return apply_overrides(out, overrides)


def _split_loss(train: dict[str, Any]) -> dict[str, Any]:
    train = dict(train)
    loss = train.get("loss")
    if isinstance(loss, str):
        loss = {"name": loss}
    if isinstance(loss, dict):
        loss = dict(loss)
        name = loss.pop("name", "bce_dice")
        trainer_keys = {k: loss.pop(k) for k in LOSS_TRAINER_KEYS if k in loss}
        options = dict(loss.pop("options", {}) or {})
        options.update(loss)
        train["loss"] = {"name": name, "options": options, **trainer_keys}
    return train


def resolve_data(data: Any) -> dict[str, Any]:
    """A run config's `data` as the dataset's complete options (its defaults filled in), so that
    config.yaml says everything the data depends on."""
    if isinstance(data, dict) and set(data) == {"preset"}:
        data = data["preset"]
    resolved = resolve_data_config(data)
    _, dcfg = dataset_class_and_config(resolved)
    return {"name": resolved["name"], **(to_dict(dcfg) if dcfg is not None else {})}


def resolve_run_config(raw: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """Validate a raw run config. Returns the dataclass and the resolved plain dict (config.yaml)."""
    raw = normalize_raw(raw)
    raw = dict(raw)
    raw["model"] = resolve_model(raw.get("model", "shared-ris-b"))
    raw["data"] = resolve_data(raw.get("data", "synthref"))
    if "train" in raw:
        raw["train"] = _split_loss(raw["train"] or {})
    cfg = to_dataclass(RunConfig, raw, "run config")
    # validate the loss options now (unknown keys fail before any training)
    loss_cfg = LOSSES.make_config(cfg.train.loss.name, cfg.train.loss.options, "train.loss")
    cfg.train.loss.options = to_dict(loss_cfg) if loss_cfg is not None else {}
    resolved = to_dict(cfg)
    resolved["train"]["betas"] = list(cfg.train.betas)
    loss = cfg.train.loss
    resolved["train"]["loss"] = {"name": loss.name, **loss.options, **{k: getattr(loss, k) for k in LOSS_TRAINER_KEYS}}
    return cfg, resolved


def comparable(resolved: dict[str, Any], volatile: tuple[tuple[str, ...], ...] = VOLATILE_KEYS) -> dict[str, Any]:
    """The resolved config without the keys that do not change results (`volatile`, default VOLATILE_KEYS)."""
    out = copy.deepcopy(resolved)
    for path, default in LATER_DEFAULTS.items():
        node = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == default:
            del node[path[-1]]
    for path in volatile:
        node = out
        for part in path[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out
