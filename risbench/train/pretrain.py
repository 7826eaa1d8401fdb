"""`risbench pretrain`: train an encoder on image-text pairs without masks, with its family's objective,
then export it in the family's official checkpoint layout beside the tokenizer it was trained with.

An artifact is a folder `<name>-<hash>/` (hash = `config_hash` of the resolved config):
  encoder files   what the objective exports (BEiT-3: encoder.pth, loadable with encoder.weights=; Swin + BERT:
                  swin.pth and bert/, loadable with encoder.swin_weights= and encoder.bert_path=)
  tokenizer.*     the tokenizer the encoder's word ids refer to (fine-tuning must use the same one)
  pretrain_log.jsonl, config.yaml
  pretrain.json   provenance, written last (its presence marks a finished artifact): the resolved config and
                  its hash, steps, the loss curve, git commit, versions, device, sha256 of every file
It is looked for in the cache ($RISBENCH_CACHE or .cache, `pretrain/`) and in the committed folder
`pretrained/` at the project root; a sweep pretrains once and every variant and seed shares the result.
Single process (CPU or one GPU); resumable from checkpoints/last.pt, step for step.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from risbench.config import PROJECT_ROOT
from risbench.errors import IncompatibleError, RisbenchError
from risbench.io import atomic_write_bytes, atomic_write_text, provenance
from risbench.registry import ENCODERS, OBJECTIVES
from risbench.results import PRETRAIN_FILE, PretrainProvenance
from risbench.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from risbench.train.components import default_cache_dir, process_settings
from risbench.train.distributed import GlobalBatchSampler, env_world_size, init_distributed
from risbench.train.optim import LRSchedule, build_optimizer
from risbench.train.precision import autocast_context, precision_name, warn_if_slow_bf16
from risbench.train.pretrain_config import PretrainConfig, config_hash, resolve_pretrain_config
from risbench.train.progress import Progress, truncate_log, use_quiet

COMMITTED_DIR = PROJECT_ROOT / "pretrained"


@dataclass
class Pretrained:
    """A finished pretraining artifact: where it is, its hash, and how a fine-tuning run loads it."""

    directory: Path
    hash: str
    encoder_options: dict[str, str]  # absolute paths, e.g. {"weights": ".../encoder.pth"}
    tokenizer_path: str
    provenance: PretrainProvenance


def artifact_name(cfg: PretrainConfig, resolved: dict[str, Any]) -> str:
    return f"{cfg.name}-{config_hash(resolved)}"


def search_dirs() -> list[Path]:
    """Where finished artifacts are looked for, in order: the cache, then the committed folder."""
    return [default_cache_dir() / "pretrain", COMMITTED_DIR]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_artifact(directory: Path, expected_hash: str | None = None) -> Pretrained:
    """Check and describe a finished artifact: schema, hash, and every file against its sha256."""
    path = directory / PRETRAIN_FILE
    prov = PretrainProvenance.read(path)
    if expected_hash is not None and prov.hash != expected_hash:
        raise RisbenchError(f"{path}: artifact of config {prov.hash}, expected {expected_hash}")
    if config_hash(prov.config) != prov.hash:
        raise RisbenchError(f"{path}: its config does not hash to its recorded hash {prov.hash}")
    for name, digest in prov.files.items():
        file = directory / name
        if not file.is_file() or _sha256(file) != digest:
            raise RisbenchError(
                f"{directory}: {name} is missing or differs from its recorded sha256; re-run pretraining"
            )
    options = {k: str(directory / v) for k, v in prov.encoder_options.items()}
    return Pretrained(directory, prov.hash, options, str(directory / prov.tokenizer), prov)


def find_artifact(name: str) -> Pretrained | None:
    """The first finished artifact `name` (`<config name>-<hash>`) in `search_dirs()`, or None."""
    for root in search_dirs():
        if (root / name / PRETRAIN_FILE).is_file():
            return read_artifact(root / name, name.rsplit("-", 1)[1])
    return None


def pretrain(
    raw: dict[str, Any],
    out_dir: Path | None = None,
    *,
    quiet: bool = False,
    resume: bool = True,
    interrupt_after: int | None = None,
    command: str | None = None,
) -> Pretrained | None:
    """Pretrain the encoder of a raw config, or reuse the finished artifact with the same hash. Writes to
    `out_dir` (default: the cache). Returns the artifact; None when `interrupt_after` stopped it early.
    `command` is recorded as the one that regenerates it (default `risbench pretrain <name>`)."""
    cfg, resolved = resolve_pretrain_config(raw)
    name = artifact_name(cfg, resolved)
    if out_dir is None:
        # a finished artifact is reused without its chain; a missing one makes the stages it continues first
        found = find_artifact(name)
        if found is not None:
            return found
        out_dir = search_dirs()[0] / name
    out_dir = Path(out_dir)
    if (out_dir / PRETRAIN_FILE).is_file():
        return read_artifact(out_dir, config_hash(resolved))
    if env_world_size() > 1:
        raise RisbenchError("risbench pretrain runs in one process; start it without torchrun")
    cfg_path = out_dir / "config.yaml"
    if cfg_path.is_file() and resume:
        old = yaml.safe_load(cfg_path.read_text()) or {}
        if config_hash(old) != config_hash(resolved):
            raise RisbenchError(f"{out_dir} holds a pretraining of another config; choose another --out or delete it")
    parent = pretrain(resolved["continue_from"], quiet=quiet) if "continue_from" in resolved else None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, yaml.safe_dump(resolved, sort_keys=False))
    info = init_distributed()
    with process_settings(cfg, info.device):
        command = command or f"risbench pretrain {cfg.name}"
        return _run(cfg, resolved, out_dir, info.device, quiet, resume, interrupt_after, command, parent)


def tokenizer_cache(cfg: PretrainConfig) -> Path:
    """Where a pretraining config's tokenizer is trained and cached."""
    return Path(cfg.tokenizer.cache_dir) if cfg.tokenizer.cache_dir else default_cache_dir() / "tokenizers"


def build_objective(cfg: PretrainConfig, resolved: dict[str, Any], cache: Path, parent: Pretrained | None = None):
    """(objective module holding the encoder, tokenizer, training dataset) for a resolved config; `parent`:
    the artifact it continues, whose tokenizer it uses and whose encoder and heads it starts from."""
    from risbench.data.build import train_texts
    from risbench.data.tokenizers import build_tokenizer
    from risbench.data.words import class_ids

    section = dict(resolved["model"]["encoder"])
    enc_name = section.pop("name")
    encoder = ENCODERS.get(enc_name).obj(ENCODERS.make_config(enc_name, section, "pretrain config model.encoder"))
    entry = OBJECTIVES.get(cfg.objective.name)
    missing = set(entry.obj.requires) - set(encoder.out_spec.traits)
    if missing:
        raise IncompatibleError(
            f"incompatible components: objective '{cfg.objective.name}' needs {', '.join(sorted(missing))} but "
            f"encoder '{enc_name}' provides {', '.join(sorted(encoder.out_spec.traits))}"
        )
    path = parent.tokenizer_path if parent is not None else cfg.tokenizer.path
    texts = None if path else train_texts(resolved["data"])
    vocab = cfg.tokenizer.vocab_size or encoder.vocab_size
    tokenizer = build_tokenizer(encoder.tokenizer_family, path, texts, cache, vocab)
    options = OBJECTIVES.make_config(cfg.objective.name, cfg.objective.options, "pretrain config objective")
    objective = entry.obj(options, encoder, tokenizer)
    if parent is not None:
        objective.continue_export(parent.directory)
    dataset = _split(resolved, encoder, "train", cfg.seed)
    if hasattr(objective, "bind_word_classes"):
        classes = dataset.word_classes() if hasattr(dataset, "word_classes") else {}
        objective.bind_word_classes(class_ids(tokenizer, classes)[0], str(resolved["data"].get("name")))
    return objective, tokenizer, dataset


def _split(resolved: dict[str, Any], encoder, split: str, seed: int):
    from risbench.data.build import build_dataset

    return build_dataset(
        resolved["data"],
        split,
        image_size=encoder.image_size,
        mean=encoder.pixel_mean,
        std=encoder.pixel_std,
        train=split == "train",
        seed=seed,
    )


def _run(cfg, resolved, out_dir, device, quiet, resume, interrupt_after, command, parent) -> Pretrained | None:
    from risbench.data.collate import Collator

    tcfg = cfg.train
    started = provenance(device, 1, cfg.seed)  # the code that runs: read before it can change on disk
    started["precision"] = precision_name(device, tcfg.amp)
    warn_if_slow_bf16(device, tcfg.amp)
    seed_everything(cfg.seed)
    objective, tokenizer, dataset = build_objective(cfg, resolved, tokenizer_cache(cfg), parent)
    objective.to(device).train()
    collate = Collator(tokenizer, cfg.tokenizer.max_len)
    steps_per_epoch = len(dataset) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise RisbenchError(f"train.batch_size {tcfg.batch_size} is larger than the training split ({len(dataset)})")
    optimizer = build_optimizer(objective, tcfg)
    schedule = LRSchedule(tcfg, tcfg.max_steps)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0}
    last, log_path = out_dir / "checkpoints" / "last.pt", out_dir / "pretrain_log.jsonl"
    if resume and last.is_file():
        ckpt = load_checkpoint(last, map_location=device)
        objective.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        state = dict(ckpt["state"])
        set_rng_state(ckpt["rng"])
        truncate_log(log_path, state["step"])
    elif log_path.exists():
        log_path.unlink()

    def save() -> None:
        save_checkpoint(
            last,
            {
                "model": objective.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "state": dict(state),
                "rng": rng_state(),
                "config": resolved,
            },
        )

    progress = Progress(tcfg.max_steps, True, use_quiet(quiet))
    progress.update(state["step"], None)
    window: dict[str, float] = {}
    window_steps, window_time = 0, 0.0
    try:
        while state["step"] < tcfg.max_steps:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(state["epoch"])
            sampler = GlobalBatchSampler(
                len(dataset), tcfg.batch_size, seed=cfg.seed, epoch=state["epoch"], start_batch=state["batch_in_epoch"]
            )
            gen = torch.Generator()  # the loader's own: creating it must not draw from the global RNG
            gen.manual_seed(cfg.seed * 1000 + state["epoch"])
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, num_workers=tcfg.num_workers, collate_fn=collate, generator=gen
            )
            t_last = time.perf_counter()
            for batch in loader:
                lr = schedule.apply(optimizer, state["step"])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss, logs = pretrain_step(objective, optimizer, batch, device, tcfg.amp, tcfg.clip_grad)
                if not torch.isfinite(loss):
                    raise RisbenchError(
                        f"pretraining loss is {float(loss)} at step {state['step'] + 1}; lower train.lr?"
                    )
                now = time.perf_counter()
                state["train_seconds"] += now - t_last
                window_time += now - t_last
                t_last = now
                state["step"] += 1
                state["batch_in_epoch"] += 1
                window_steps += 1
                for k, v in {"loss": float(loss.detach()), **logs}.items():
                    window[k] = window.get(k, 0.0) + v
                done = state["step"] >= tcfg.max_steps
                if state["step"] % tcfg.log_every == 0 or done:
                    record = {"step": state["step"], "epoch": state["epoch"]}
                    record.update({k: round(v / window_steps, 5) for k, v in window.items()})
                    record.update(
                        lr=lr,
                        samples_per_s=round(tcfg.batch_size * window_steps / max(window_time, 1e-9), 3),
                        s_per_step=round(window_time / window_steps, 4),
                        train_seconds=round(state["train_seconds"], 2),
                    )
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    progress.update(state["step"], record)
                    window, window_steps, window_time = {}, 0, 0.0
                else:
                    progress.update(state["step"], None)
                if state["batch_in_epoch"] >= steps_per_epoch:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
                if done or state["step"] % tcfg.ckpt_every == 0:
                    save()
                if interrupt_after is not None and state["step"] >= interrupt_after and not done:
                    save()
                    return None
                if done or state["batch_in_epoch"] == 0:
                    break
            else:
                raise RuntimeError(f"empty epoch {state['epoch']} at step {state['step']}")
    finally:
        progress.close()
    return _finish(cfg, resolved, out_dir, objective, tokenizer, state, log_path, device, command, started)


def pretrain_step(objective, optimizer, batch: dict, device, amp: str, clip_grad: float | None):
    """One optimisation step of a pretraining objective: forward under autocast, backward, clipping and
    the optimizer's step (skipped when the loss is not finite). Returns (loss, logs)."""
    with autocast_context(device, amp):
        loss, logs = objective(batch)
    if not torch.isfinite(loss):
        return loss, logs
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(objective.parameters(), clip_grad)
    optimizer.step()
    return loss, logs


@torch.no_grad()
def held_out(objective, dataset, collate, device, *, max_samples: int, batch_size: int) -> dict[str, Any]:
    """The objective's logged terms on held-out pairs (the data's val split), with each pair's own image
    and with the image of the next pair in the batch: the gap is what the encoder reads from the pixels.
    Masks are drawn from a fixed seed, so the numbers are reproducible."""
    n = min(len(dataset), max_samples)
    totals: dict[str, dict[str, float]] = {"image": {}, "swapped_image": {}}
    objective.eval()
    with torch.random.fork_rng(devices=[]):
        for mode, logs in totals.items():
            torch.manual_seed(0)
            for start in range(0, n, batch_size):
                batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                if mode == "swapped_image":
                    batch["image"] = batch["image"].roll(1, dims=0)
                _, terms = objective(batch)
                for k, v in terms.items():
                    logs[k] = logs.get(k, 0.0) + v * len(batch["meta"])
    objective.train()
    return {
        "split": "val",
        "samples": n,
        **{mode: {k: round(v / n, 5) for k, v in logs.items()} for mode, logs in totals.items()},
    }


def _finish(cfg, resolved, out_dir, objective, tokenizer, state, log_path, device, command, started) -> Pretrained:
    """Export the encoder and the tokenizer, measure held-out pairs, then write the provenance file (last)."""
    from risbench.data.collate import Collator
    from risbench.data.tokenizers import save_tokenizer

    files = objective.export()
    for file_name, payload in files.items():  # bytes as they are (e.g. a config.json), anything else torch.save'd
        if isinstance(payload, bytes):
            atomic_write_bytes(out_dir / file_name, lambda f, data=payload: f.write(data))
        else:
            atomic_write_bytes(out_dir / file_name, lambda f, obj=payload: torch.save(obj, f))
    tok_name = save_tokenizer(tokenizer, out_dir).name
    curve = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    evaluation = None
    if cfg.eval_samples:
        val = _split(resolved, objective.encoder, "val", cfg.seed)
        collate = Collator(tokenizer, cfg.tokenizer.max_len)
        evaluation = held_out(
            objective, val, collate, device, max_samples=cfg.eval_samples, batch_size=cfg.train.batch_size
        )
    relative = {k: str(Path(v).relative_to(out_dir)) for k, v in objective.encoder_options(out_dir).items()}
    names = [*files, tok_name, log_path.name, "config.yaml"]
    prov = PretrainProvenance(
        name=cfg.name,
        hash=config_hash(resolved),
        command=command,
        config=resolved,
        objective=cfg.objective.name,
        steps=state["step"],
        train_seconds=round(state["train_seconds"], 2),
        final={k: v for k, v in curve[-1].items() if k.startswith(("loss", "acc"))} if curve else {},
        held_out=evaluation,
        loss_curve=[{k: r[k] for k in r if k not in ("lr", "samples_per_s", "s_per_step")} for r in curve],
        encoder_options=relative,
        tokenizer=tok_name,
        files={n: _sha256(out_dir / n) for n in names},
        **started,
    )
    if any(not math.isfinite(v) for v in prov.final.values() if isinstance(v, float)):
        raise RisbenchError("pretraining ended with a non-finite loss; nothing exported")
    prov.write(out_dir / PRETRAIN_FILE)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # the export holds the finished weights
    return read_artifact(out_dir, prov.hash)
