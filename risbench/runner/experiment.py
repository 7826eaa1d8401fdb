"""Experiment files: parse, validate and expand into resolved run configs.

An experiment file (YAML)::

    name: fpn_ablation
    description: ...
    base:                       # a run config; presets are resolved by name
      pretrain: beit3-tiny-synthref   # optional: every run fine-tunes from this pretrained encoder (pretrained.py)
      model: shared-ris-tiny    # registry/models/ preset, a YAML path, or an inline {encoder, fpn, decoder}
      data: synthref-refcoco+   # registry/datasets/ preset or inline mapping
      recipe: cpu               # registry/recipes/ preset (its sections sit under the base's own)
      train: {max_minutes: 7}
    runs:                       # explicit variants (the paper's rows); dotted keys or nested sections
      - {name: none, set: {fpn.name: none}}
      # a run's own `pretrain:` (preset, file or mapping) replaces base.pretrain for that run, e.g. a row with
      # another encoder: {name: dual, model: dual-ris-tiny, pretrain: swin-bert-tiny-synthref}
      # a run's own `recipe:` replaces the base's recipe with its tokenizer/train/eval keys (the run's own
      # sections still go on top), e.g. another method trained as its paper trains it: {recipe: refsegformer}
      - {name: cris, set: {fpn.name: cris, fpn.out_dim: 128}}
    grid: {decoder.num_layers: [1, 2]}   # optional cartesian product (on top of each run)
    seeds: [0, 1, 2]
    table: {mirrors: IV, rows: {none: none, cris: cris}, columns: [params, gflops, oiou, miou], split: val}
    # table.reference: the row every other row is compared with (default: the LAST run listed, which in
    # every shipped file is the proposed Shared-RIS variant; with a grid, the last expanded name);
    # table.delta: the accuracy columns that get a Δ column in Markdown / LaTeX (default [oiou, miou];
    # the CSV has the differences of all of them)

Dotted keys whose first part is `encoder`, `fpn` or `decoder` are under `model`. Setting a component's
`name` to a new one drops the old component's options (they belong to the old component).
Every error is one line that names the file and the key (RisbenchError, exit code 2), raised before any
run directory is created.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from risbench.config import PROJECT_ROOT, parse_override, to_dataclass
from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message
from risbench.runner.columns import COLUMNS, HIGHER_IS_BETTER, higher_is_better, is_column, known_columns
from risbench.runner.pretrained import PretrainRef, apply_pretrain, resolve_pretrain_ref
from risbench.runner.resolve import RUN_SECTIONS, key_exists, load_recipe, resolve_base, validate_run_config
from risbench.spec import SECTION_KEYS, full_key, load_config, merge, resolve_model, set_key
from risbench.train.config import comparable

COST_PARTS = ("total", "encoder", "fpn", "decoder")


@dataclass
class TableSpec:
    """The `table:` block: how `risbench table` lays the runs out."""

    mirrors: str | None = None  # paper table id in paper_tables.csv (e.g. "IV", "VII(a)")
    # run name -> paper `variant`, or "<table>: <variant>" for a row of another paper table (also fixes the row
    # order)
    rows: dict[str, str] | None = None
    columns: list[str] = field(default_factory=lambda: list(COLUMNS))
    split: str = "val"
    cost: str = "total"  # which part Params/GFLOPs count: total, encoder, fpn, decoder
    caption: str | None = None  # first sentence of the caption (the rest is generated)
    paper_caption: str | None = None  # where the paper's numbers come from (default: Shared-RIS Table <mirrors>)
    reference: str | None = None  # run compared with every other row (default: the last run listed)
    delta: list[str] = field(default_factory=lambda: ["oiou", "miou"])  # Δ columns in Markdown / LaTeX

    def __post_init__(self) -> None:
        # ValueError: to_dataclass prefixes it with the file and the key
        for col in self.columns:
            if not is_column(col):
                raise ValueError("columns: " + unknown_name_message("column", col, known_columns()))
        accuracy = [c for c in COLUMNS if c in HIGHER_IS_BETTER]
        for col in self.delta:
            if not higher_is_better(col):
                raise ValueError("delta: " + unknown_name_message("accuracy column", col, accuracy))
        if self.reference is not None:
            self.reference = str(self.reference)  # YAML reads a run named 1 as a number
        if self.cost not in COST_PARTS:
            raise ValueError("cost: " + unknown_name_message("cost part", self.cost, COST_PARTS))


RECIPE_SECTIONS = ("tokenizer", "train", "eval")  # what a recipe sets, and what a run's own recipe replaces


@dataclass
class RunVariant:
    """One entry of `runs:`."""

    name: str
    set: dict[str, Any] = field(default_factory=dict)  # dotted key -> value
    model: Any = None  # a mapping merged into the base model, or a preset name / {preset: ...} replacing it
    data: dict[str, Any] | None = None
    tokenizer: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    description: str | None = None
    pretrain: Any = None  # this run fine-tunes from this pretraining instead of base.pretrain (pretrained.py)
    recipe: str | None = None  # this run's recipe: replaces the base's recipe and its tokenizer/train/eval keys


@dataclass
class ExperimentFile:
    """The top level of an experiment file."""

    name: str
    base: dict[str, Any]
    description: str | None = None
    runs: list[dict[str, Any]] | None = None
    grid: dict[str, list[Any]] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    table: dict[str, Any] | None = None


@dataclass
class Run:
    """One expanded run: a readable id, its resolved config and where it lives."""

    variant: str  # row name in the table
    seed: int
    config: dict[str, Any]
    index: int  # position of the variant in the experiment (table row order)
    run_id: str = ""
    # the pretraining this run fine-tunes from (its own `pretrain:` or base.pretrain); its artifact's paths
    # are in `config`, so the hash already changes with it
    pretrain: PretrainRef | None = field(default=None, compare=False, repr=False)

    @property
    def config_hash(self) -> str:
        return config_hash(comparable(self.config))

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = f"{self.variant}-s{self.seed}-{self.config_hash}"


@dataclass
class Experiment:
    """A validated, expanded experiment."""

    name: str
    path: Path
    description: str | None
    table: TableSpec
    runs: list[Run]
    variants: list[str]  # row order
    seeds: list[int]
    pretrain: PretrainRef | None = None  # base.pretrain: the encoder every run fine-tunes from

    def run_dir(self, runs_dir: Path, run: Run) -> Path:
        return Path(runs_dir) / self.name / run.run_id

    def pretrains(self, runs: list[Run] | None = None) -> list[PretrainRef]:
        """The distinct pretrainings `runs` (default: all) fine-tune from, in run order."""
        out: dict[str, PretrainRef] = {}
        for run in self.runs if runs is None else runs:
            if run.pretrain is not None:
                out.setdefault(run.pretrain.name, run.pretrain)
        return list(out.values())

    def meta(self) -> dict[str, Any]:
        """What `risbench table` needs to lay the runs out (written as runs/<name>/experiment.json)."""
        return {
            "name": self.name,
            "file": str(self.path),
            "description": self.description,
            "variants": self.variants,
            "seeds": self.seeds,
            "table": {k: v for k, v in vars(self.table).items()},
            "runs": [r.run_id for r in self.runs],
            "pretrain": "; ".join(ref.describe() for ref in self.pretrains()) or None,
        }


def _project_relative(value: Any) -> Any:
    """`value` with every string path inside the project written relative to it ('<project>/...')."""
    root = str(PROJECT_ROOT).rstrip("/") + "/"
    if isinstance(value, dict):
        return {k: _project_relative(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_project_relative(v) for v in value]
    if isinstance(value, str) and value.startswith(root):
        return "<project>/" + value[len(root) :]
    return value


def config_hash(cfg: dict[str, Any], n: int = 6) -> str:
    """Short, stable hash of a resolved run config (canonical JSON, sorted keys). Paths inside the project
    (the committed pretrained encoders, the pretraining cache) count relative to it, so that a run has the
    same id in every checkout and a finished run folder copied from a clone is reused."""
    blob = json.dumps(_project_relative(cfg), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "_", text).strip("_") or "x"


def _apply_variant(
    base: dict[str, Any], variant: RunVariant, where: str, pretrain: PretrainRef | None = None, root: Path | None = None
) -> dict[str, Any]:
    """The base config with the variant's recipe (which replaces the base's tokenizer / train / eval sections)
    and sections merged, then its own pretraining (`pretrain`), then its `set:` keys (so that a `set:` can
    still send the run back to random init)."""
    cfg = copy.deepcopy(base)
    if variant.recipe is not None:
        recipe = load_recipe(variant.recipe, f"{where}.recipe", root)
        bad = [k for k in recipe if k not in RECIPE_SECTIONS]
        if bad:
            message = unknown_name_message("recipe section", bad[0], RECIPE_SECTIONS)
            raise UnknownNameError(f"{where}.recipe: {message}")
        for section in RECIPE_SECTIONS:
            cfg[section] = recipe.get(section) or {}
    for section in RUN_SECTIONS:
        value = getattr(variant, section)
        if value is None:
            continue
        if section == "model" and (isinstance(value, str) or (isinstance(value, dict) and "preset" in value)):
            try:
                cfg["model"] = resolve_model(value)
            except RisbenchError as exc:
                raise type(exc)(f"{where}.model: {exc}") from None
            continue
        if section == "data" and isinstance(value, dict) and "preset" in value:
            # another dataset: its preset replaces the base's data (merged, the base's resolved options would win)
            cfg["data"] = dict(value)
            continue
        if not isinstance(value, dict):
            raise RisbenchError(f"{where}.{section}: expected a mapping, got {value!r}")
        if section == "model":
            bad = [k for k in value if k not in SECTION_KEYS]
            if bad:
                raise UnknownNameError(f"{where}.model: " + unknown_name_message("key", bad[0], SECTION_KEYS))
        cfg[section] = merge(cfg.get(section) or {}, value)  # a renamed component replaces the old one
    if pretrain is not None:
        cfg = apply_pretrain(cfg, pretrain, f"{where}.pretrain")
    # component renames first, so that options set beside them land on the new component
    items = sorted(variant.set.items(), key=lambda kv: not full_key(kv[0]).endswith(".name"))
    for key, value in items:
        cfg = set_key(cfg, full_key(key), value, f"{where}.set.{key}")
    return cfg


def _grid_label(key: str, value: Any) -> str:
    leaf = key.split(".")[-1]
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return _slug(f"{leaf}{value}")


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Parse, validate and expand an experiment file; `overrides` ('train.epochs=1') apply to every run."""
    path = Path(path)
    raw = load_config(path)
    where = str(path)
    exp = to_dataclass(ExperimentFile, raw, where)
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", exp.name) or set(exp.name) == {"."}:
        raise RisbenchError(f"{where}: name '{exp.name}' must be letters, digits, '_', '-', '.' or '+', not only dots")
    if not isinstance(exp.base, dict):
        raise RisbenchError(f"{where}.base: expected a mapping")
    if not exp.seeds:
        raise RisbenchError(f"{where}.seeds: needs at least one seed")
    if len(set(exp.seeds)) != len(exp.seeds):
        raise RisbenchError(f"{where}.seeds: duplicate seeds {exp.seeds}")
    table = to_dataclass(TableSpec, exp.table or {}, f"{where}.table")
    base_raw = dict(exp.base)
    pretrain_ref = None
    if base_raw.get("pretrain") is not None:
        pretrain_ref = resolve_pretrain_ref(base_raw.pop("pretrain"), f"{where}.base.pretrain", root=path.parent)
    base_raw.pop("pretrain", None)
    base = resolve_base(base_raw, f"{where}.base", root=path.parent)
    if pretrain_ref is not None:
        base = apply_pretrain(base, pretrain_ref, f"{where}.base.pretrain")

    variants: list[RunVariant] = []
    refs: dict[str, PretrainRef | None] = {}  # each variant's pretraining
    by_value: dict[str, PretrainRef] = {}  # a run's own `pretrain:` values, each resolved once
    seen: set[str] = set()
    for i, item in enumerate(exp.runs or [{"name": exp.name if not exp.grid else ""}]):
        if not isinstance(item, dict):
            raise RisbenchError(f"{where}.runs[{i}]: expected a mapping with a 'name'")
        label = f"{where}.runs[{item.get('name', i)}]"
        variant = to_dataclass(RunVariant, item, label)
        if variant.name in seen:
            raise RisbenchError(f"{where}.runs: duplicate run name '{variant.name}'")
        if variant.name and not re.fullmatch(r"[A-Za-z0-9_.,+-]+", variant.name):
            raise RisbenchError(f"{label}.name: '{variant.name}' must be letters, digits, '_', '-', ',', '.' or '+'")
        seen.add(variant.name)
        variants.append(variant)
        if variant.pretrain is None:
            refs[variant.name] = pretrain_ref
        else:
            key = json.dumps(variant.pretrain, sort_keys=True, default=str)
            if key not in by_value:
                by_value[key] = resolve_pretrain_ref(variant.pretrain, f"{label}.pretrain", root=path.parent)
            refs[variant.name] = by_value[key]

    grid = exp.grid or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise RisbenchError(f"{where}.grid.{key}: expected a non-empty list of values")

    cli_overrides = [parse_override(o) for o in overrides or []]
    runs: list[Run] = []
    names: list[str] = []
    for variant in variants:
        vwhere = f"{where}.runs[{variant.name}]" if exp.runs else f"{where}.base"
        own = refs[variant.name] if variant.pretrain is not None else None
        vcfg = _apply_variant(base, variant, vwhere, own, root=path.parent)
        vresolved = validate_run_config(vcfg, vwhere) if grid else {}
        for key in grid:
            if not key_exists(vcfg, vresolved, key):
                raise UnknownNameError(
                    f"{where}.grid.{key}: key does not exist in the resolved base config of run "
                    f"'{variant.name or exp.name}'"
                )
        combos = list(itertools.product(*grid.values())) if grid else [()]
        for combo in combos:
            cfg = vcfg
            parts = [variant.name] if variant.name else []
            for key, value in zip(grid, combo, strict=True):
                cfg = set_key(cfg, full_key(key), value, f"{where}.grid.{key}")
                parts.append(_grid_label(key, value))
            for keyparts, value in cli_overrides:
                cfg = set_key(cfg, full_key(".".join(keyparts)), value, f"--set {'.'.join(keyparts)}")
            name = "-".join(parts)
            if name in names:
                raise RisbenchError(f"{where}: two runs expand to the same name '{name}'")
            names.append(name)
            for seed in exp.seeds:
                resolved = validate_run_config({**cfg, "seed": seed}, f"{where}: run '{name}'")
                runs.append(
                    Run(variant=name, seed=seed, config=resolved, index=len(names) - 1, pretrain=refs[variant.name])
                )

    if table.rows:
        for key in table.rows:
            if key not in names:
                raise UnknownNameError(f"{where}.table.rows: " + unknown_name_message("run", key, names))
    if table.reference is not None and table.reference not in names:
        raise UnknownNameError(f"{where}.table.reference: " + unknown_name_message("run", table.reference, names))
    return Experiment(
        name=exp.name,
        path=path,
        description=exp.description,
        table=table,
        runs=runs,
        variants=names,
        seeds=list(exp.seeds),
        pretrain=pretrain_ref,
    )


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'1/4' -> (1, 4); the shard takes runs i, i+n, i+2n, ... (0-based)."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise RisbenchError(f"--shard expects i/n with 0 <= i < n, got '{text}'")
    return int(m.group(1)), int(m.group(2))


def shard_runs(runs: list[Run], shard: tuple[int, int] | None) -> list[Run]:
    if shard is None:
        return list(runs)
    i, n = shard
    return runs[i::n]
