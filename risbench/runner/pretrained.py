"""An experiment's `base.pretrain:`: every run of the sweep fine-tunes from one pretrained encoder (a run's
own `pretrain:` replaces it for that run, e.g. a row with another encoder and its own pretraining).

`base.pretrain` names a registry/pretrain/ preset, a YAML file (relative to the experiment file) or an
inline pretraining config. Loading the experiment resolves it and points each run's encoder options
(e.g. `model.encoder.weights`) and `tokenizer.path` at the artifact `<name>-<hash>/` (committed under
pretrained/, else in the cache, where `ensure_pretrained` makes it before the first run trains). The
artifact's folder name carries the hash of its config, so a run's config changes when the pretraining
does. A variant that sets those options itself (e.g. `encoder.weights: null`) overrides them: that is
how an experiment compares fine-tuning from random init with fine-tuning from the pretrained encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from risbench.config import PROJECT_ROOT
from risbench.data.tokenizers import ARTIFACT_NAMES
from risbench.errors import RisbenchError
from risbench.registry import OBJECTIVES
from risbench.results import PRETRAIN_FILE, PretrainProvenance
from risbench.train.pretrain import Pretrained, artifact_name, find_artifact, pretrain, search_dirs
from risbench.train.pretrain_config import load_pretrain_config, resolve_pretrain_config


@dataclass
class PretrainRef:
    """The pretraining an experiment fine-tunes from, and where its artifact is (or will be)."""

    name: str  # <config name>-<hash>
    raw: dict[str, Any]
    directory: Path
    encoder_options: dict[str, str]
    tokenizer_path: str
    data: dict[str, Any]
    steps: int
    objective: str
    encoder: str  # the encoder it pretrains (a run fine-tuning from it must have the same)

    @property
    def config_name(self) -> str:
        """The pretraining config's own name (the artifact name without its hash)."""
        return self.name.rsplit("-", 1)[0]

    def exists(self) -> bool:
        return find_artifact(self.name) is not None

    def describe(self) -> str:
        """For captions: which encoder weights every run starts from."""
        return f"pretrained {self.name} ({self.objective}, {self.steps} steps)"


def resolve_pretrain_ref(value: Any, where: str, root: Path | None = None) -> PretrainRef:
    """A `base.pretrain` value (preset name, file, or mapping) as a PretrainRef; one-line errors."""
    try:
        if isinstance(value, dict):
            raw = value
        elif isinstance(value, str):
            candidate = root / value if root is not None else None
            raw = load_pretrain_config(str(candidate) if candidate is not None and candidate.is_file() else value)
        else:
            raise RisbenchError(f"expected a registry/pretrain/ preset name, a file or a mapping, got {value!r}")
        cfg, resolved = resolve_pretrain_config(raw)
    except RisbenchError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    name = artifact_name(cfg, resolved)
    found = find_artifact(name)
    directory = found.directory if found is not None else search_dirs()[0] / name
    options = OBJECTIVES.get(cfg.objective.name).obj.encoder_options(directory)
    family = _tokenizer_family(resolved)
    return PretrainRef(
        name=name,
        raw=raw,
        directory=directory,
        encoder_options=options,
        tokenizer_path=str(directory / ARTIFACT_NAMES[family]),
        data=resolved["data"],
        steps=cfg.train.max_steps,
        objective=cfg.objective.name,
        encoder=resolved["model"]["encoder"]["name"],
    )


def _tokenizer_family(resolved: dict[str, Any]) -> str:
    from risbench.registry import ENCODERS

    return ENCODERS.get(resolved["model"]["encoder"]["name"]).obj.tokenizer_family


def apply_pretrain(cfg: dict[str, Any], ref: PretrainRef, where: str) -> dict[str, Any]:
    """The resolved base config with the encoder options and tokenizer path of `ref`; the pretraining
    scenes must not be the fine-tuning scenes (same dataset and seed)."""
    from risbench.train.config import resolve_data

    encoder = cfg["model"]["encoder"].get("name")
    if encoder != ref.encoder:
        raise RisbenchError(
            f"{where}: {ref.config_name} pretrains encoder '{ref.encoder}', but the run's encoder is '{encoder}'"
        )
    data = resolve_data(cfg.get("data"))  # with the dataset's defaults, as the pretraining data is
    if "seed" in data and data.get("name") == ref.data.get("name") and data.get("seed") == ref.data.get("seed"):
        raise RisbenchError(
            f"{where}: the pretraining data ({ref.data.get('name')} seed {ref.data.get('seed')}) is the "
            f"fine-tuning data; give the pretraining config's data another seed"
        )
    out = dict(cfg)
    out["model"] = {**cfg["model"], "encoder": with_encoder_options(cfg["model"]["encoder"], ref.encoder_options)}
    out["tokenizer"] = {**(cfg.get("tokenizer") or {}), "path": ref.tokenizer_path}
    return out


def with_encoder_options(encoder: dict[str, Any], options: dict[str, str]) -> dict[str, Any]:
    """An encoder section with an artifact's options set; a dotted option (`vision.weights`, a dual encoder's
    tower) is set inside its sub-section. The input is not changed."""
    out = dict(encoder)
    for key, value in options.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[leaf] = value
    return out


def without_encoder_options(encoder: dict[str, Any], options: dict[str, str]) -> dict[str, Any]:
    """An encoder section with an artifact's options (dotted ones inside their sub-sections) removed."""
    out = dict(encoder)
    for key in options:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            node.pop(leaf, None)
    return out


def ensure_pretrained(ref: PretrainRef, *, quiet: bool = False) -> Pretrained:
    """The finished artifact of `ref`, pretraining it first (once; later calls find it)."""
    found = find_artifact(ref.name)
    if found is not None:
        return found
    art = pretrain(ref.raw, ref.directory, quiet=quiet, command=f"risbench pretrain {ref.config_name}")
    if art is None or art.directory != ref.directory:  # cannot happen without interrupt_after
        raise RisbenchError(f"pretraining {ref.name} did not finish in {ref.directory}")
    return art


def describe_weights(weights: str) -> str:
    """A weights entry for a caption: a pretraining artifact by its name, objective and steps; a file under
    the project by its relative path; anything else (`random`, another path) as it is. A dual encoder's
    `swin=PATH,bert=PATH` is described part by part, once when both parts are one artifact's."""
    parts = dict(p.split("=", 1) for p in weights.split(",") if "=" in p) if "=" in weights else {}
    if parts and len(parts) == weights.count("=") == weights.count(",") + 1:
        described = {k: describe_weights(v) for k, v in parts.items()}
        if len(set(described.values())) == 1 and "(pretrained:" in next(iter(described.values())):
            return next(iter(described.values()))
        return ", ".join(f"{k} {v}" for k, v in described.items())
    path = Path(weights)
    prov = path.parent / PRETRAIN_FILE
    if weights != "random" and prov.is_file():
        info = PretrainProvenance.read(prov)
        stages, config = [info.steps], info.config
        while isinstance(config.get("continue_from"), dict):  # a staged pretraining: every stage's steps
            config = config["continue_from"]
            stages.insert(0, int(config["train"]["max_steps"]))
        steps = f"{' + '.join(map(str, stages))} steps" + (f" in {len(stages)} stages" if len(stages) > 1 else "")
        return f"{path.parent.name} (pretrained: {info.objective}, {steps})"
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except (OSError, ValueError):
        return weights
