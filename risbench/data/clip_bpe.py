"""CLIP's byte-level BPE (`clip_bpe`), offline, on the `tokenizers` library (DETRIS's text tokenizer).

Files read (`tokenizer.path`):
- OpenAI's `bpe_simple_vocab_16e6.txt.gz` (or the same text uncompressed): a header line, then merges. The
  vocabulary is CLIP's `SimpleTokenizer`'s: the 256 byte characters (GPT-2's byte -> unicode table), the same
  with `</w>`, one token per merge (the first 48,894 merges, as CLIP), then `<|startoftext|>`, `<|endoftext|>`.
- a Hugging Face CLIP directory: its `tokenizer.json`, else `vocab.json` + `merges.txt`;
- a `tokenizer.json` file (what `save_tokenizer` writes for a trained one).

Without a file, a BPE with the same pipeline is trained on the training expressions and cached (tokenizers.py):
`<|pad|>` = 0, `<|startoftext|>` = 1, `<|endoftext|>` = 2 (also the unknown token, as in CLIP).

Pipeline (HF's CLIP tokenizer.json): NFC, runs of whitespace -> one space, lower case; CLIP's word regex
(`'s|'t|...|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+`); byte-level characters; BPE with `</w>` ending each word. OpenAI's
`ftfy.fix_text` is not applied (ftfy is not a dependency); `html.unescape` (twice) and strip are.
Framing: [<|startoftext|>] + pieces[:max_len - 2] + [<|endoftext|>] + padding with `pad_id` (CLIP files: 0,
DETRIS's zero padding). The padding mask comes from the lengths, not from `ids == pad_id` (CLIP's id 0 is "!").
"""

from __future__ import annotations

import gzip
import html
import json
from functools import lru_cache
from pathlib import Path

import torch

from risbench.data.tokenizers import Tokenizer
from risbench.errors import RisbenchError

SOT, EOT, PAD = "<|startoftext|>", "<|endoftext|>", "<|pad|>"
WORD_REGEX = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_MERGES = 49152 - 256 - 2  # CLIP's SimpleTokenizer uses merges[1 : 49152 - 256 - 2 + 1] of the file


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's / CLIP's byte -> printable character table, in CLIP's order (printable bytes first)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _pipeline(tok):
    """CLIP's normaliser, pre-tokeniser and decoder on a `tokenizers.Tokenizer`."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_REGEX), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = None
    return tok


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]]):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    model = models.BPE(vocab, merges, unk_token=EOT, end_of_word_suffix="</w>", continuing_subword_prefix="")
    return _pipeline(HFTokenizer(model))


def read_openai_bpe(path: Path):
    """CLIP's vocabulary from OpenAI's merges file (`bpe_simple_vocab_16e6.txt.gz`, gz or plain text)."""
    raw = path.read_bytes()
    try:
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise RisbenchError(f"{path}: not a CLIP BPE merges file ({exc})") from None
    lines = text.split("\n")[1 : CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    if any(len(m) != 2 for m in merges):
        raise RisbenchError(f"{path}: not a CLIP BPE merges file (a merge line is not two tokens)")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [SOT, EOT]
    return _bpe({t: i for i, t in enumerate(tokens)}, merges)


def read_clip_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` from any of the files listed in the module docstring."""
    from tokenizers import Tokenizer as HFTokenizer

    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _pipeline(HFTokenizer.from_file(str(path / "tokenizer.json")))
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise RisbenchError(f"CLIP tokenizer: {path} has neither tokenizer.json nor vocab.json + merges.txt")
        lines = [ln for ln in merges.read_text(encoding="utf-8").split("\n") if ln and not ln.startswith("#version")]
        return _bpe(json.loads(vocab.read_text(encoding="utf-8")), [tuple(ln.split()) for ln in lines])
    if path.suffix == ".json":
        try:
            return _pipeline(HFTokenizer.from_file(str(path)))
        except Exception as exc:
            raise RisbenchError(f"{path}: not a tokenizers json ({exc})") from None
    return read_openai_bpe(path)


def train_clip_bpe(texts: list[str], vocab_size: int, out: Path) -> None:
    """A CLIP-pipeline BPE trained on `texts` (only the characters they use), saved as tokenizers json."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, trainers

    tok = _pipeline(HFTokenizer(models.BPE(unk_token=EOT, end_of_word_suffix="</w>", continuing_subword_prefix="")))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, SOT, EOT], end_of_word_suffix="</w>", show_progress=False
    )
    tok.train_from_iterator([clean(t) for t in texts], trainer)
    tok.save(str(out))


def clean(text: str) -> str:
    """CLIP's `basic_clean` without ftfy: HTML entities unescaped (twice), surrounding space stripped."""
    return html.unescape(html.unescape(text)).strip()


class ClipBpeTokenizer(Tokenizer):
    """CLIP BPE ids: <|startoftext|> + pieces + <|endoftext|>, padded with `pad_id` (0 unless `<|pad|>` exists)."""

    family = "clip_bpe"

    def __init__(self, tok, source: str) -> None:  # tok: tokenizers.Tokenizer
        self.tok = tok
        tok.no_padding()
        tok.no_truncation()
        bos, eos = tok.token_to_id(SOT), tok.token_to_id(EOT)
        if bos is None or eos is None:
            raise RisbenchError(f"{source}: CLIP vocabulary lacks {SOT} or {EOT}")
        pad = tok.token_to_id(PAD)
        super().__init__(bos, eos, 0 if pad is None else pad, tok.get_vocab_size(), source)

    def _pieces(self, text: str) -> list[int]:
        return self.tok.encode(clean(text), add_special_tokens=False).ids

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, max_len) long, pad_mask (B, max_len) bool, True after each row's <|endoftext|>)."""
        if max_len < 3:
            raise ValueError(f"max_len must be at least 3 (start, one token, end), got {max_len}")
        ids = torch.full((len(texts), max_len), self.pad_id, dtype=torch.long)
        pad_mask = torch.ones((len(texts), max_len), dtype=torch.bool)
        for row, text in enumerate(texts):
            seq = [self.bos_id, *self._pieces(text)[: max_len - 2], self.eos_id]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            pad_mask[row, : len(seq)] = False
        return ids, pad_mask

    def decode(self, ids: list[int]) -> str:
        """One framed row back to lower-cased words: what lies between <|startoftext|> and <|endoftext|>."""
        ids = list(ids)
        keep = ids[1 if ids[:1] == [self.bos_id] else 0 :]
        keep = keep[: keep.index(self.eos_id)] if self.eos_id in keep else keep
        return " ".join(self.tok.decode(keep, skip_special_tokens=False).replace("</w>", " ").split())
