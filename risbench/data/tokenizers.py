"""Tokenizers per encoder family, offline: SentencePiece (BEiT-3), WordPiece (BERT), CLIP BPE (risbench.data.clip_bpe).

`build_tokenizer(family, path, train_texts, cache_dir, vocab_size)` returns a `Tokenizer` whose
`encode(texts, max_len)` gives `(ids LongTensor (B, max_len), pad_mask BoolTensor (B, max_len), True on pad)`.

- "sentencepiece": with `path` (a local `beit3.spm`), ids follow the XLM-R convention that BEiT-3 uses
  (<s>=0, <pad>=1, </s>=2, <unk>=3, a SentencePiece id i >= 1 becomes i + 1, and id 0 (<unk>) becomes 3): the
  mapping of transformers' slow XLMRobertaTokenizer, implemented here on `sentencepiece` directly because
  transformers >= 5 no longer reads a `.spm` file given as `vocab_file`. Without `path`, a SentencePiece BPE
  model is trained on `train_texts` with those same special ids (so no offset), cached under `cache_dir` by a
  hash of the texts and the vocabulary size (BPE, not unigram: on a small closed corpus such as SynthRef's,
  unigram training stops at about 65 pieces, i.e. characters, while BPE reaches whole words).
  A `path` to a model risbench trained itself (bos 0, pad 1, eos 2, unk 3: what `risbench pretrain` ships
  beside its encoder) is read with its own ids, no offset.
  Framing: [<s>] + pieces[:max_len - 2] + [</s>] + padding.
- "wordpiece": with `path` (a directory with `tokenizer.json` or `vocab.txt`, or the file itself), BERT's
  lower-casing WordPiece through the `tokenizers` library; without it, a WordPiece vocabulary trained on
  `train_texts` with [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, cached the same way.
  Framing: [CLS] + pieces[:max_len - 2] + [SEP] + padding.
- "clip_bpe": CLIP's byte-level BPE (OpenAI's merges file, a Hugging Face CLIP directory, or a tokenizers json),
  or one trained on `train_texts` with CLIP's pipeline, cached the same way; see `risbench.data.clip_bpe`.

Every id is < `vocab_size` (the encoder's embedding size); a trained vocabulary is capped at it and a
file-based one larger than it is an error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from risbench.errors import RisbenchError, unknown_name_message
from risbench.io import atomic_write_path

FAMILIES = ("sentencepiece", "wordpiece", "clip_bpe")


class Tokenizer:
    """Text -> framed, padded id tensors. Subclasses provide `_pieces(text) -> list[int]` (no specials)."""

    family: str = ""

    def __init__(
        self, bos_id: int, eos_id: int, pad_id: int, vocab_size: int, source: str, mask_id: int | None = None
    ) -> None:
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.vocab_size = vocab_size
        # the id that replaces a masked word in masked language modelling (risbench pretrain)
        self.mask_id = mask_id
        self._source = source

    def _pieces(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, max_len) long, pad_mask (B, max_len) bool, True on padding)."""
        if max_len < 3:
            raise ValueError(f"max_len must be at least 3 (start, one token, end), got {max_len}")
        ids = torch.full((len(texts), max_len), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            seq = [self.bos_id, *self._pieces(text)[: max_len - 2], self.eos_id]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, ids == self.pad_id

    def _piece_strings(self, text: str) -> list[str]:
        raise NotImplementedError

    def token_strings(self, text: str, max_len: int) -> list[str]:
        """The text of each position `encode([text], max_len)` fills, specials included (for attention maps)."""
        return ["<s>", *self._piece_strings(text)[: max_len - 2], "</s>"]

    def describe(self) -> str:
        """Where the vocabulary came from (for provenance)."""
        return f"{self.family}: {self._source} (vocab {self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    family = "sentencepiece"

    def __init__(self, model_file: Path, xlmr_offset: bool | None, source: str) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        if xlmr_offset is None:  # a file on disk: XLM-R's (unk 0, bos 1, eos 2) or one risbench trained
            xlmr_offset = not self.is_risbench_trained(self.sp)
        self.xlmr_offset = xlmr_offset
        n = self.sp.get_piece_size()
        # XLM-R: 4 specials + (n - 1) shifted pieces + <mask> at n + 1; trained: the model's own ids, and
        # <unk> stands in for the mask (a tokenizer trained on the corpus never emits it).
        mask_id = n + 1 if xlmr_offset else self.sp.unk_id()
        super().__init__(0, 2, 1, n + 2 if xlmr_offset else n, source, mask_id)

    @staticmethod
    def is_risbench_trained(sp) -> bool:
        """True for a model `_train_sentencepiece` wrote (bos 0, pad 1, eos 2, unk 3): its ids need no shift."""
        return (sp.bos_id(), sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)

    def _piece_strings(self, text: str) -> list[str]:
        return [p.replace("\u2581", "") or "\u2581" for p in self.sp.encode(text, out_type=str)]

    def _pieces(self, text: str) -> list[int]:
        ids = self.sp.encode(text)
        if self.xlmr_offset:
            return [i + 1 if i else 3 for i in ids]
        return ids


class WordPieceTokenizer(Tokenizer):
    family = "wordpiece"

    def __init__(self, tok, source: str) -> None:  # tok: tokenizers.Tokenizer
        self.tok = tok
        tok.post_processor = None
        tok.no_padding()
        tok.no_truncation()
        ids = {t: tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise RisbenchError(f"{source}: WordPiece vocabulary lacks {', '.join(missing)}")
        super().__init__(
            ids["[CLS]"], ids["[SEP]"], ids["[PAD]"], tok.get_vocab_size(), source, tok.token_to_id("[MASK]")
        )

    def _pieces(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _piece_strings(self, text: str) -> list[str]:
        return list(self.tok.encode(text, add_special_tokens=False).tokens)


# Part of the cache key: bump it when the training recipe of a tokenizer here changes, so that a cached
# model from older code is not reused. The trainer library's version is part of the key too.
TRAINING_RECIPE_VERSION = 1


def _cache_key(family: str, texts: list[str], vocab_size: int) -> str:
    import importlib.metadata

    library = "sentencepiece" if family == "sentencepiece" else "tokenizers"
    version = importlib.metadata.version(library)
    h = hashlib.sha256(f"{family}\n{vocab_size}\n{TRAINING_RECIPE_VERSION}\n{library} {version}\n".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _train_sentencepiece(texts: list[str], vocab_size: int, out: Path) -> None:
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces: take what it supports
        model_type="bpe",  # unigram stalls at ~65 pieces (characters) on SynthRef's small closed corpus
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        character_coverage=1.0,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        minloglevel=2,
    )
    out.write_bytes(buf.getvalue())


def _wordpiece_pipeline(tok, lowercase: bool):
    from tokenizers import decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def _train_wordpiece(texts: list[str], vocab_size: int, out: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, trainers

    tok = _wordpiece_pipeline(HFTokenizer(models.WordPiece(unk_token="[UNK]")), lowercase=True)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(out))


def _load_wordpiece(path: Path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.suffix == ".json":
        return HFTokenizer.from_file(str(path))
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return HFTokenizer.from_file(str(path / "tokenizer.json"))
    vocab = path if path.is_file() else path / "vocab.txt"
    if not vocab.is_file():
        raise RisbenchError(f"WordPiece vocabulary not found: expected {path}/tokenizer.json or {path}/vocab.txt")
    lowercase = True
    config = folder / "tokenizer_config.json"
    if config.is_file():
        lowercase = bool(json.loads(config.read_text()).get("do_lower_case", True))
    return _wordpiece_pipeline(HFTokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]")), lowercase)


def build_tokenizer(
    family: str,
    path: str | Path | None,
    train_texts: list[str] | None,
    cache_dir: str | Path,
    vocab_size: int,
) -> Tokenizer:
    """The tokenizer for an encoder family: from a local file, or trained on `train_texts` and cached."""
    if family not in FAMILIES:
        raise RisbenchError(unknown_name_message("tokenizer family", family, FAMILIES))
    if path:
        path = Path(path)
        if not path.exists():
            raise RisbenchError(f"tokenizer file not found: {path}")
        if family == "sentencepiece":
            try:
                tok: Tokenizer = SentencePieceTokenizer(path, xlmr_offset=None, source=str(path))
            except (OSError, RuntimeError) as exc:
                raise RisbenchError(f"{path}: not a SentencePiece model ({exc})") from None
        elif family == "clip_bpe":
            from risbench.data.clip_bpe import ClipBpeTokenizer, read_clip_tokenizer

            tok = ClipBpeTokenizer(read_clip_tokenizer(path), source=str(path))
        else:
            tok = WordPieceTokenizer(_load_wordpiece(path), source=str(path))
        if tok.vocab_size > vocab_size:
            raise RisbenchError(
                f"{path}: tokenizer vocabulary ({tok.vocab_size}) is larger than the encoder's vocab_size "
                f"({vocab_size}); set encoder.vocab_size to at least {tok.vocab_size}"
            )
        return tok
    if not train_texts:
        raise RisbenchError(f"{family} tokenizer: no file given and no training expressions to train one on")
    key = _cache_key(family, train_texts, vocab_size)
    cache_dir = Path(cache_dir)
    how = f"trained on {len(train_texts)} training expressions, vocab_size<={vocab_size}"
    if family == "sentencepiece":
        file = cache_dir / f"spm-{key}.model"
        if not file.is_file():
            atomic_write_path(file, lambda p: _train_sentencepiece(train_texts, vocab_size, p))
        tok = SentencePieceTokenizer(file, xlmr_offset=False, source=f"{file} ({how})")
    elif family == "clip_bpe":
        from risbench.data.clip_bpe import ClipBpeTokenizer, read_clip_tokenizer, train_clip_bpe

        file = cache_dir / f"clip-bpe-{key}.json"
        if not file.is_file():
            atomic_write_path(file, lambda p: train_clip_bpe(train_texts, vocab_size, p))
        tok = ClipBpeTokenizer(read_clip_tokenizer(file), source=f"{file} ({how})")
    else:
        from tokenizers import Tokenizer as HFTokenizer

        file = cache_dir / f"wordpiece-{key}.json"
        if not file.is_file():
            atomic_write_path(file, lambda p: _train_wordpiece(train_texts, vocab_size, p))
        tok = WordPieceTokenizer(HFTokenizer.from_file(str(file)), source=f"{file} ({how})")
    if tok.vocab_size > vocab_size:  # cannot happen with the caps above; kept as a guard on library changes
        raise RisbenchError(f"{file}: trained vocabulary {tok.vocab_size} exceeds vocab_size {vocab_size}")
    return tok


ARTIFACT_NAMES = {"sentencepiece": "tokenizer.model", "wordpiece": "tokenizer.json", "clip_bpe": "tokenizer.json"}


def save_tokenizer(tok: Tokenizer, directory: Path) -> Path:
    """Write `tok` as one file in `directory` (SentencePiece: its model; WordPiece, CLIP BPE: a tokenizers json) that
    `build_tokenizer(family, path=...)` reads back with the same ids; returns the path."""
    path = Path(directory) / ARTIFACT_NAMES[tok.family]
    if isinstance(tok, SentencePieceTokenizer):
        if tok.xlmr_offset:
            raise RisbenchError(f"{tok.describe()}: an XLM-R SentencePiece file is shipped as it is, not copied")
        data = tok.sp.serialized_model_proto()
        atomic_write_path(path, lambda p: p.write_bytes(data))
    else:
        atomic_write_path(path, lambda p: tok.tok.save(str(p)))
    return path
