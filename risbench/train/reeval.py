"""A finished run directory evaluated again: `load_run` (config, components and weights) and `evaluate_run`
(other splits / threshold / resolution / checkpoint, swapped expressions, or the first N sentences),
written under evals/ with a name that holds every setting that changes the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from risbench.errors import RisbenchError
from risbench.io import atomic_write_text, check_writable
from risbench.results import Metrics
from risbench.train.api import evaluate_splits, run_provenance
from risbench.train.checkpoint import load_checkpoint, load_model_state
from risbench.train.components import build_components
from risbench.train.config import resolve_run_config
from risbench.train.distributed import DistInfo, init_distributed
from risbench.train.evaluate import per_sentence_csv
from risbench.train.metrics import SentenceResult
from risbench.train.sentences import per_sentence_path, write_per_sentence


def load_run(
    run_dir: str | Path, checkpoint: str = "auto", info: DistInfo | None = None, overrides: list[str] | None = None
):
    """(RunConfig, resolved dict, Components with weights loaded, checkpoint used) of a run directory, or of a
    run config file with a checkpoint path (risbench.train.weights: a released model's file). checkpoint: auto
    (the one the run's metrics came from: eval.checkpoint, falling back to last), best, last, or a path.
    A run's own checkpoint is checked against its digest and its model; a file given by path is read in
    whichever layout it has (`load_model_weights`)."""
    from risbench.train.weights import load_model_weights, read_target

    run_dir, resolved, is_run = read_target(run_dir, overrides)
    cfg, _ = resolve_run_config(resolved)
    if not is_run and checkpoint in ("auto", "best", "last"):
        raise RisbenchError(f"a run config has no checkpoints of its own: give --checkpoint PATH (not {checkpoint})")
    info = info or init_distributed()
    comp = build_components(cfg, resolved, info)
    ckpts = run_dir / "checkpoints"
    if checkpoint == "auto":
        checkpoint = cfg.eval.checkpoint
        if not (ckpts / f"{checkpoint}.pt").exists():
            checkpoint = "last"
    own = checkpoint in ("best", "last")
    path = ckpts / f"{checkpoint}.pt" if own else Path(checkpoint)
    if not path.exists():
        raise RisbenchError(f"{path}: no such checkpoint (has the run trained?)")
    if own or _is_risbench_file(path):  # its digest checked; a checkpoint of another model is named
        load_model_state(comp.model, load_checkpoint(path, info.device), path, resolved["model"])
    else:  # a released model's file in another layout (risbench.train.weights)
        load_model_weights(comp.model, path)
    comp.model.eval()
    return cfg, resolved, comp, str(path)


def eval_name(
    splits: list[str], threshold: float, resolution: str, swap_text: bool, checkpoint: str, max_samples: int | None
) -> str:
    """The file name of an evaluation under evals/: every setting that changes its numbers is in it, so a
    partial evaluation (`--max-samples`) or one of other weights never replaces a full one."""
    name = f"{'+'.join(splits)}_t{threshold:g}_{resolution}{'_swapped' if swap_text else ''}"
    if checkpoint != "auto":
        name += f"_ckpt-{Path(checkpoint).stem}"
    return name + (f"_first{max_samples}" if max_samples is not None else "")


def evaluate_run(
    run_dir: str | Path,
    *,
    splits: list[str] | None = None,
    threshold: float | None = None,
    resolution: str | None = None,
    swap_text: bool = False,
    checkpoint: str = "auto",
    max_samples: int | None = None,
    write: bool = True,
    per_sentence: bool = False,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run again; writes run_dir/evals/<name>.json (and, with `per_sentence`,
    <name>.<split>.csv with one row per sentence) and returns the JSON's content.

    A full evaluation with the run's own settings (every sentence, its threshold, resolution and
    checkpoint, original text) also adds run_dir/per_sentence.<split>.csv.gz where the run lacks it (runs
    from before those files); it never replaces one, and a partial one (`max_samples`) never writes it."""
    from risbench.train.weights import read_target

    if max_samples is not None and max_samples < 1:
        raise RisbenchError(f"--max-samples must be >= 1, got {max_samples}")
    info = init_distributed()
    target, run_dir = run_dir, read_target(run_dir, overrides)[0]  # what to load; where evaluations go
    if write and info.is_main:
        check_writable(run_dir / "evals", "run folder")
    cfg, resolved, comp, used = load_run(target, checkpoint, info, overrides)
    threshold = cfg.eval.threshold if threshold is None else threshold
    resolution = resolution or cfg.eval.resolution
    if resolution not in ("original", "input"):
        raise RisbenchError(f"--resolution must be original or input, got '{resolution}'")
    splits = splits or list(cfg.eval.splits)
    sentences: dict[str, list[SentenceResult]] = {}
    result = Metrics(
        splits=evaluate_splits(
            comp,
            cfg,
            info,
            splits,
            threshold=threshold,
            resolution=resolution,
            swap_text=swap_text,
            max_samples=max_samples,
            sentences=sentences,
        ),
        provenance={**run_provenance(comp, cfg, resolved, info), "threshold": threshold, "resolution": resolution},
        checkpoint=used,
    )
    out = result.to_dict()
    if write and info.is_main:
        name = eval_name(splits, threshold, resolution, swap_text, checkpoint, max_samples)
        if per_sentence:
            for split, items in sentences.items():
                atomic_write_text(run_dir / "evals" / f"{name}.{split}.csv", per_sentence_csv(items))
        own = (threshold, resolution, checkpoint) == (cfg.eval.threshold, cfg.eval.resolution, "auto")
        if own and max_samples is None and not swap_text:
            for split, items in sentences.items():
                if not per_sentence_path(run_dir, split).exists():
                    write_per_sentence(run_dir, split, items, threshold, resolution)
        result.write(run_dir / "evals" / f"{name}.json")
        out["written_to"] = str(run_dir / "evals" / f"{name}.json")
    return out


def _is_risbench_file(path: Path) -> bool:
    """Whether `path` is in risbench's checkpoint layout, or unreadable (then `load_checkpoint` says why)."""
    from risbench.train.weights import checkpoint_layout, read_weights

    try:
        return checkpoint_layout(read_weights(path)) == "risbench"
    except RisbenchError:
        return True
