"""Tokenizers: framing, padding masks, id ranges, caching of trained vocabularies, local files, collate."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import sentencepiece as spm
import torch

from risbench.data.build import build_dataset, train_texts
from risbench.data.collate import Collator
from risbench.data.synthref import SceneSource, SynthRefConfig
from risbench.data.tokenizers import build_tokenizer
from risbench.errors import RisbenchError

TEXTS = [
    f"the {c} {s} {p}"
    for c in ("red", "green", "blue", "yellow")
    for s in ("circle", "square", "star")
    for p in ("on the left", "at the top", "to the right of the cross")
] * 5


@pytest.mark.parametrize("family,bos,eos,pad", [("sentencepiece", 0, 2, 1), ("wordpiece", 2, 3, 0)])
def test_trained_tokenizer_framing_and_cache(tmp_path, family, bos, eos, pad):
    tok = build_tokenizer(family, None, TEXTS, tmp_path, 1000)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (bos, eos, pad)
    assert tok.vocab_size <= 1000 and "trained on 180 training expressions" in tok.describe()
    ids, pad_mask = tok.encode(["the red circle on the left", "blue star", "the " * 40], 12)
    assert ids.dtype == torch.long and pad_mask.dtype == torch.bool and ids.shape == pad_mask.shape == (3, 12)
    assert ids.max() < tok.vocab_size and ids.min() >= 0
    assert torch.equal(pad_mask, ids == pad)
    assert ids[:, 0].tolist() == [bos] * 3
    # whole words on this small closed corpus
    assert ids[0].tolist()[:8] == [bos, *ids[0].tolist()[1:7], eos] and pad_mask[0, 8:].all()
    assert not pad_mask[1, :4].any() and ids[1, 3] == eos and pad_mask[1, 4:].all()
    assert not pad_mask[2].any() and ids[2, -1] == eos  # truncated to max_len - 2 pieces
    files = sorted(p.name for p in tmp_path.iterdir())
    start = time.perf_counter()
    again = build_tokenizer(family, None, TEXTS, tmp_path, 1000)
    assert time.perf_counter() - start < 0.5 and sorted(p.name for p in tmp_path.iterdir()) == files
    assert torch.equal(again.encode(["blue star"], 6)[0], tok.encode(["blue star"], 6)[0])
    other = build_tokenizer(family, None, TEXTS[:30], tmp_path, 1000)
    assert len(list(tmp_path.iterdir())) == len(files) + 1 and other.describe() != tok.describe()


@pytest.mark.parametrize("family", ["sentencepiece", "wordpiece"])
def test_trained_vocab_capped_by_encoder_size(tmp_path, family):
    texts = [" ".join(f"w{i}x{j}" for j in range(6)) for i in range(300)]
    tok = build_tokenizer(family, None, texts, tmp_path, 120)
    assert tok.vocab_size <= 120
    ids, _ = tok.encode(texts[:50], 20)
    assert ids.max() < 120


def _xlmr_style_spm(tmp_path):
    """A SentencePiece model with XLM-R's id layout (<unk>=0, <s>=1, </s>=2), as beit3.spm."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=buf, vocab_size=40, model_type="bpe", minloglevel=2
    )
    path = tmp_path / "beit3.spm"
    path.write_bytes(buf.getvalue())
    return path, spm.SentencePieceProcessor(model_file=str(path))


def test_local_spm_follows_xlmr_ids(tmp_path):
    path, sp = _xlmr_style_spm(tmp_path)
    assert sp.unk_id() == 0 and sp.bos_id() == 1
    tok = build_tokenizer("sentencepiece", path, None, tmp_path, 64010)
    assert tok.vocab_size == sp.get_piece_size() + 2 and str(path) in tok.describe()
    ids, pad_mask = tok.encode(["the red circle", "zzz"], 10)
    pieces = sp.encode("the red circle")
    assert ids[0].tolist()[: len(pieces) + 2] == [0, *[p + 1 for p in pieces], 2]
    assert 3 in ids[1].tolist()  # an unknown character maps to <unk> = 3
    assert torch.equal(pad_mask, ids == 1)
    with pytest.raises(RisbenchError, match="larger than the encoder's vocab_size"):
        build_tokenizer("sentencepiece", path, None, tmp_path, 10)


def test_local_wordpiece_vocab(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "circle", "##s"]
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = build_tokenizer("wordpiece", tmp_path / "bert", None, tmp_path, 30522)
    ids, pad_mask = tok.encode(["The RED circles", "purple"], 8)
    assert ids[0].tolist() == [2, 5, 6, 7, 8, 3, 0, 0]
    assert ids[1].tolist()[:3] == [2, 1, 3]
    assert pad_mask[0].tolist() == [False] * 6 + [True] * 2


def test_errors(tmp_path):
    with pytest.raises(RisbenchError, match="unknown tokenizer family 'bpe'"):
        build_tokenizer("bpe", None, TEXTS, tmp_path, 100)
    with pytest.raises(RisbenchError, match="not found"):
        build_tokenizer("sentencepiece", tmp_path / "missing.spm", None, tmp_path, 100)
    with pytest.raises(RisbenchError, match="no training expressions"):
        build_tokenizer("wordpiece", None, [], tmp_path, 100)


@pytest.mark.parametrize("flavour", ["refcoco", "refcoco+", "refcocog"])
def test_synthref_tokenizer_texts_cover_the_vocabulary(flavour):
    data = {"name": "synthref", "flavour": flavour, "negative_fraction": 0.3}
    covered = {w for t in train_texts(data) for w in t.split()}
    source = SceneSource(SynthRefConfig(flavour=flavour, negative_fraction=0.3), "val")
    val_words = {w for i in range(300) for r in source.scene(i).refs for t, _ in r.sentences for w in t.split()}
    assert val_words <= covered


def test_collator_batches(tmp_path):
    ds = build_dataset(
        {"name": "synthref", "flavour": "refcocog", "num_val": 4, "negative_fraction": 0.5},
        "val",
        image_size=48,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        train=False,
    )
    tok = build_tokenizer("wordpiece", None, [ds[i]["text"] for i in range(len(ds))], tmp_path, 500)
    batch = Collator(tok, 20)([ds[i] for i in range(6)])
    assert batch["image"].shape == (6, 3, 48, 48) and batch["mask"].shape == (6, 48, 48)
    assert batch["text_ids"].shape == batch["text_pad_mask"].shape == (6, 20)
    assert batch["exists"].dtype == torch.bool and batch["exists"].tolist() == [ds[i]["exists"] for i in range(6)]
    assert len(batch["meta"]) == 6 and isinstance(batch["meta"][0]["orig_mask"], np.ndarray)
    assert (batch["mask"][~batch["exists"]].sum() == 0).item()
