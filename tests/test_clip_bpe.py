"""CLIP BPE (`clip_bpe`): OpenAI's merges file and a Hugging Face CLIP directory give the ids derived by hand;
a tokenizer trained on SynthRef round-trips its words; framing, padding mask and artifacts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from risbench.data.build import train_texts
from risbench.data.clip_bpe import bytes_to_unicode
from risbench.data.tokenizers import build_tokenizer, save_tokenizer
from risbench.errors import RisbenchError

MERGES = ["t h", "th e</w>", "r e", "re d</w>"]
# By hand, CLIP's vocabulary layout: the 94 printable ASCII characters '!'..'~' are ids 0..93 ('a' = 97 - 33 = 64,
# 'c' = 66, 't' = 83, '!' = 0), the same + '</w>' are 256 + those, merges 512.. ('the</w>' = 513, 'red</w>' = 515),
# then <|startoftext|> = 516, <|endoftext|> = 517. "The  red cat!" -> the</w> red</w> c a t</w> !</w>.
EXPECTED = [516, 513, 515, 66, 64, 256 + 83, 256 + 0, 517, 0, 0]


def _openai_file(tmp_path: Path) -> Path:
    path = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    path.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(MERGES) + "\n").encode()))
    return path


def _hf_dir(tmp_path: Path) -> Path:
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path / "clip-vit-base-patch16"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return folder


@pytest.mark.parametrize("source", ["openai", "hf"])
def test_clip_files_give_the_ids_derived_by_hand(tmp_path: Path, source: str) -> None:
    path = _openai_file(tmp_path) if source == "openai" else _hf_dir(tmp_path)
    tok = build_tokenizer("clip_bpe", path, None, tmp_path, 49408)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (516, 517, 0, 518)
    ids, pad = tok.encode(["The  red cat!", "the " * 30], 10)
    assert ids[0].tolist() == EXPECTED
    # "!" is id 0 like the padding: the mask comes from the length, not from the id
    assert pad[0].tolist() == [False] * 8 + [True] * 2
    assert ids[1].tolist() == [516] + [513] * 8 + [517] and not pad[1].any()  # truncated, <|endoftext|> kept
    assert tok.decode(ids[0].tolist()) == "the red cat !"


def test_clip_file_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("#version\na b c\n")
    with pytest.raises(RisbenchError, match="not a CLIP BPE merges file"):
        build_tokenizer("clip_bpe", tmp_path / "bad.txt", None, tmp_path, 49408)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RisbenchError, match="neither tokenizer.json nor vocab.json"):
        build_tokenizer("clip_bpe", tmp_path / "empty", None, tmp_path, 49408)
    with pytest.raises(RisbenchError, match="larger than the encoder's vocab_size"):
        build_tokenizer("clip_bpe", _openai_file(tmp_path), None, tmp_path, 100)


def test_trained_clip_bpe_round_trips_synthref_words(tmp_path: Path) -> None:
    texts = train_texts({"name": "synthref"})
    tok = build_tokenizer("clip_bpe", None, texts, tmp_path / "cache", 2000)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size <= 2000
    sample = texts[:: max(1, len(texts) // 200)]
    ids, pad = tok.encode(sample, 40)
    assert ids.max() < tok.vocab_size
    for row, text in zip(ids.tolist(), sample, strict=True):
        assert tok.decode(row) == " ".join(text.lower().split())
        assert tok.eos_id in row and 2 not in row[1 : row.index(tok.eos_id)]  # no unknown piece
    # whole words on SynthRef's closed corpus: one piece per word
    assert (~pad[0]).sum() == len(sample[0].split()) + 2
    # the cache, and the artifact read back with the same ids
    again = build_tokenizer("clip_bpe", None, texts, tmp_path / "cache", 2000)
    assert again.encode(sample[:3], 17)[0].tolist() == tok.encode(sample[:3], 17)[0].tolist()
    saved = save_tokenizer(tok, tmp_path)
    back = build_tokenizer("clip_bpe", saved, None, tmp_path, 2000)
    assert back.encode(sample[:3], 17)[0].tolist() == tok.encode(sample[:3], 17)[0].tolist()
