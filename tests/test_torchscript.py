"""TorchScript archives (OpenAI CLIP's `.pt`) are read for their tensors without running their code (issue 12)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from risbench.errors import RisbenchError
from risbench.torchscript import load_torchscript_state_dict


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.emb = nn.Embedding(7, 4).half()
        self.register_buffer("pos", torch.arange(5.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.fc(x)) + self.pos.sum()


@pytest.mark.parametrize("how", ["script", "trace"])
def test_tensors_of_a_torchscript_archive_without_jit_load(tmp_path, monkeypatch, how):
    """Every tensor comes back under its state_dict name, dtype and value; torch.jit.load is never called."""
    torch.manual_seed(0)
    model = Tiny()
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, torch.randn(2, 3))
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, path)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load would compile the archive's code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    state = load_torchscript_state_dict(path)
    reference = model.state_dict()
    assert sorted(state) == sorted(reference)
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def _archive_with(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "hostile.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hostile/data.pkl", payload)
        archive.writestr("hostile/code/__torch__.py", "def forward(self): pass\n")
        archive.writestr("hostile/version", "3\n")
    return path


class _Touch:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_a_hostile_archive_is_refused_and_runs_nothing(tmp_path):
    """A data.pkl whose unpickling would create a file (os.system): one RisbenchError, and no file."""
    created = tmp_path / "pwned"
    path = _archive_with(tmp_path, pickle.dumps(_Touch(created), protocol=2))
    with pytest.raises(RisbenchError) as err:
        load_torchscript_state_dict(path)
    assert "is not allowed" in str(err.value) and "\n" not in str(err.value)
    assert not created.exists()


def test_not_an_archive_is_one_line(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)  # a zip, but torch.save's: data.pkl holds a dict, no module
    with pytest.raises(RisbenchError, match="not a TorchScript module"):
        load_torchscript_state_dict(path)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(RisbenchError, match="not a TorchScript archive"):
        load_torchscript_state_dict(tmp_path / "junk.pt")


def test_tower_weights_reader_takes_a_torchscript_archive(tmp_path):
    """The towers' weights reader (OpenAI CLIP's ViT-B-16.pt is such an archive) reads one the same way."""
    from risbench.models.towers.common import read_state_dict

    model = Tiny()
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(model), path)
    state = read_state_dict(path, "text tower clip_text")
    assert torch.equal(state["fc.weight"], model.fc.weight.detach())
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    assert torch.equal(read_state_dict(plain, "text tower clip_text")["fc.weight"], model.fc.weight.detach())
