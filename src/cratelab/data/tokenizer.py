"""Tokenizers behind one small interface: GPT-2's BPE (offline) and a byte-level BPE trained on the corpus.

Both are byte-level: every string round-trips exactly, and every token is a byte string, which is
what bits per byte and readable neuron records need.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cratelab.errors import CratelabError

EOT = "<|endoftext|>"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenizer regex (tiktoken's r50k_base), in the form every tiktoken version accepts.
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer(ABC):
    name: str  # "gpt2" | "bpe"
    vocab_size: int
    eot_id: int  # end of text, written after every document; never produced by encode()

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of text; special-token strings in text are encoded as ordinary text."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """encode() of each text, in parallel threads."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids; bytes that are not valid UTF-8 become U+FFFD."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (the EOT token: its name)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict from which from_dict() rebuilds the same tokenizer."""

    def token_str(self, token_id: int) -> str:
        """Readable text of one token, e.g. " the"; partial UTF-8 characters show as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each token id decodes to (EOT: 0), for bits per byte. Shape (vocab_size,)."""
        if not hasattr(self, "_byte_lengths"):
            lengths = np.array([len(self.token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int64)
            lengths[self.eot_id] = 0
            self._byte_lengths = lengths
        return self._byte_lengths

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Tokenizer:
        if d.get("name") == "gpt2":
            return GPT2Tokenizer()
        if d.get("name") == "bpe":
            return BPETokenizer.from_json(d["json"])
        raise CratelabError(f"unknown tokenizer {d.get('name')!r} (expected 'gpt2' or 'bpe')")


def _gpt2_ranks_path() -> Path:
    # find_spec locates the package without importing it (whisper's import pulls in torch and more).
    spec = importlib.util.find_spec("whisper")
    path = Path(spec.submodule_search_locations[0]) / "assets" / "gpt2.tiktoken" if spec else None
    if path is None or not path.is_file():
        raise CratelabError("GPT-2 tokenizer file not found (whisper/assets/gpt2.tiktoken): run "
                            "`pip install --no-deps openai-whisper==20250625`, or use data.tokenizer = 'bpe'")
    return path


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (r50k_base) from the ranks file shipped in openai-whisper: no network."""

    name = "gpt2"

    def __init__(self) -> None:
        import tiktoken

        path = _gpt2_ranks_path()
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != GPT2_RANKS_SHA256:
            raise CratelabError(f"{path} does not have the pinned sha256 {GPT2_RANKS_SHA256}: reinstall it with "
                                "`pip install --no-deps --force-reinstall openai-whisper==20250625`")
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in raw.splitlines())}
        self._enc = tiktoken.Encoding("gpt2", pat_str=R50K_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={EOT: 50256}, explicit_n_vocab=50257)
        self.vocab_size = self._enc.n_vocab
        self.eot_id = self._enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids), errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(token_id)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "gpt2", "vocab_size": self.vocab_size}


def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character that stands for each byte."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


class BPETokenizer(Tokenizer):
    """Byte-level BPE (the `tokenizers` library) trained on a corpus, with an EOT special token."""

    name = "bpe"

    def __init__(self, tok: Any) -> None:
        tok.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a boundary
        self._tok = tok
        self._byte_of = _byte_level_decoder()
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(EOT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, progress: bool = False) -> BPETokenizer:
        """Train on texts (the training split only). Deterministic for the same texts in the same order."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(text))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._tok.id_to_token(token_id)
        return piece.encode("utf-8") if token_id == self.eot_id else bytes(self._byte_of[c] for c in piece)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "bpe", "vocab_size": self.vocab_size, "json": self._tok.to_str()}


def load_tokenizer(name: str, train_texts: Iterable[str] = (), bpe_vocab_size: int = 8192,
                   progress: bool = False) -> Tokenizer:
    """The configured tokenizer: "gpt2", or "bpe" trained on train_texts."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "bpe":
        return BPETokenizer.train(train_texts, bpe_vocab_size, progress)
    raise CratelabError(f"data.tokenizer = {name!r}: expected 'gpt2' or 'bpe'")
