"""The result files risbench writes, as dataclasses with a schema version: a run's metrics.json (and each
evaluation under evals/), flops.json and run.json, and a pretraining artifact's pretrain.json. They are
written and read here only; the versioning rule is in docs/decisions.md (§ Result files)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from risbench.errors import RisbenchError
from risbench.io import atomic_write_json

METRICS_FILE = "metrics.json"
FLOPS_FILE = "flops.json"
RUN_FILE = "run.json"
PRETRAIN_FILE = "pretrain.json"
RERUN = "delete it and re-run that run (risbench run / train reuses its checkpoints)"

R = TypeVar("R", bound="ResultFile")


def read_object(path: Path, fix: str = RERUN) -> dict[str, Any]:
    """A JSON object from `path`; an unreadable file is a RisbenchError naming it and `fix` (a corrupt
    result is never shown as a missing value)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RisbenchError(f"{path}: not readable JSON ({str(exc).splitlines()[0]}); {fix}") from None
    if not isinstance(data, dict):
        raise RisbenchError(f"{path}: expected a JSON object, got {type(data).__name__}; {fix}")
    return data


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type a field is annotated with (dict, list, str, int, float, X | None)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    names = {dict: "an object", list: "a list", str: "a string", int: "a whole number", float: "a number"}
    return names.get(typing.get_origin(hint) or hint, "null" if hint is type(None) else str(hint))


class ResultFile:
    """What every result file shares: a schema version, the checks on reading, the one writer.

    A file without `schema_version` is version 1 (the layout before the field existed). Reading refuses, in
    one line naming the file, a version newer than `VERSION`, a missing required field (a field without a
    default) and a field of the wrong type. Keys the dataclass does not know are ignored."""

    VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "result file"
    FIX: ClassVar[str] = RERUN
    VERSION_KEYS: ClassVar[tuple[str, ...]] = ("schema_version",)
    OMIT_NONE: ClassVar[tuple[str, ...]] = ()  # optional fields not written when None
    schema_version: int

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any], path: Path | str) -> R:
        """Check `data` (the content of `path`) against this schema and build the dataclass."""
        version = next((data[k] for k in cls.VERSION_KEYS if k in data), 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RisbenchError(f"{path}: schema_version {version!r} is not a version (1, 2, ...); {cls.FIX}")
        if version > cls.VERSION:
            raise RisbenchError(
                f"{path}: {cls.WHAT} of schema version {version}, newer than this risbench reads "
                f"({cls.VERSION}); update risbench to read it"
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == "schema_version":
                continue
            if f.name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise RisbenchError(
                        f"{path}: no '{f.name}' field, which a {cls.WHAT} of schema version {version} has; {cls.FIX}"
                    )
                continue
            if not _matches(data[f.name], hints[f.name]):
                raise RisbenchError(
                    f"{path}: field '{f.name}' should be {_type_name(hints[f.name])}, got "
                    f"{type(data[f.name]).__name__}; {cls.FIX}"
                )
            values[f.name] = data[f.name]
        return cls(schema_version=version, **values)

    @classmethod
    def read(cls: type[R], path: Path | str) -> R:
        """Read and check the file at `path`."""
        return cls.from_dict(read_object(Path(path), cls.FIX), path)

    def to_dict(self) -> dict[str, Any]:
        """The file's content: schema_version first, then the fields in their order (those in `OMIT_NONE`
        only when set)."""
        body = asdict(self)  # type: ignore[call-overload]
        skip = {"schema_version", *(k for k in self.OMIT_NONE if body[k] is None)}
        return {"schema_version": self.schema_version, **{k: v for k, v in body.items() if k not in skip}}

    def write(self, path: Path | str) -> None:
        """Write the file atomically (temporary file + rename: a reader never sees half of it)."""
        atomic_write_json(Path(path), self.to_dict())


@dataclass(kw_only=True)
class Metrics(ResultFile):
    """metrics.json (train_run: written last, its presence marks a finished run) and evals/<name>.json
    (`risbench eval`): per split {split, threshold, resolution, text, oIoU, mIoU, P@X, ...} in percent;
    the training summary (metrics.json only); where the numbers came from; the checkpoint (evals only)."""

    VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "metrics file"
    OMIT_NONE: ClassVar[tuple[str, ...]] = ("train", "checkpoint")
    splits: dict[str, Any]
    train: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    schema_version: int = VERSION

    @property
    def code_version(self) -> str | None:
        """The code version that produced the numbers (None for runs from before code versions)."""
        value = self.provenance.get("code_version")
        return value if isinstance(value, str) else None


@dataclass(kw_only=True)
class Flops(ResultFile):
    """flops.json: what risbench.flops.measure counts (per component and in total: params, FLOPs) and the
    code version of the files that build and count the model."""

    VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "FLOP count"
    OMIT_NONE: ClassVar[tuple[str, ...]] = ("encoder_trainable_share_of_frozen",)
    model: dict[str, Any] | str | None = None
    input: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Any]
    total: dict[str, Any]
    uncounted_ops: dict[str, Any] = field(default_factory=dict)
    convention: str | None = None
    text_len_note: str | None = None
    weights: str | None = None
    parts: list[Any] = field(default_factory=list)
    encoder_trainable_share_of_frozen: float | None = None  # PEFT: trainable encoder params per frozen one
    code_version: str | None = None
    schema_version: int = VERSION

    def count(self, part: str) -> tuple[float | None, float | None]:
        """(params, FLOPs) of a component ('encoder', 'fpn', 'decoder', ...) or of 'total'; None where unknown."""
        entry = self.total if part == "total" else self.components.get(part)
        entry = entry if isinstance(entry, dict) else {}

        def number(key: str) -> float | None:
            value = entry.get(key)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return number("params"), number("flops")

    @property
    def text_len(self) -> int | None:
        """The text length the model was counted at."""
        value = self.input.get("text_len")
        return value if isinstance(value, int) else None


@dataclass(kw_only=True)
class RunInfo(ResultFile):
    """run.json (written by the sweep): which experiment row a run folder is, for the tables."""

    VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "run description"
    FIX: ClassVar[str] = "delete it and prepare the run again (risbench run EXPERIMENT rewrites it)"
    experiment: str | None = None
    variant: str
    seed: int
    index: int | None = None
    run_id: str | None = None
    config_hash: str | None = None
    schema_version: int = VERSION


@dataclass(kw_only=True)
class PretrainProvenance(ResultFile):
    """pretrain.json (written last: its presence marks a finished artifact): the resolved config and its
    hash, the objective, steps and loss curve, how fine-tuning loads the export, the sha256 of every file,
    and the code, packages and device it ran on. Version 1 files name their version `schema`."""

    VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "pretraining provenance file"
    FIX: ClassVar[str] = "delete the artifact folder and pretrain again (risbench pretrain CONFIG)"
    VERSION_KEYS: ClassVar[tuple[str, ...]] = ("schema_version", "schema")
    name: str
    hash: str
    command: str | None = None
    config: dict[str, Any]
    objective: str
    steps: int
    train_seconds: float | None = None
    final: dict[str, Any] = field(default_factory=dict)
    held_out: dict[str, Any] | None = None
    loss_curve: list[Any] = field(default_factory=list)
    encoder_options: dict[str, Any]
    tokenizer: str
    files: dict[str, Any]
    git: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    device: dict[str, Any] | None = None
    precision: str | None = None  # what the steps ran in: "bf16 autocast" or "fp32" (absent in earlier files)
    world_size: int | None = None
    seed: int | None = None
    host: str | None = None
    schema_version: int = VERSION
