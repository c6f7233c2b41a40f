"""Token shards: a corpus tokenized once into train.bin / val.bin, cached under a content-derived key.

Layout of ``cache_dir/datasets/<key>/``: ``train.bin`` and ``val.bin`` (flat token ids, the EOT token
after every document), ``tokenizer.json`` (Tokenizer.to_dict) and ``meta.json`` (counts, hashes,
settings, the builder). The key hashes the corpus content, the tokenizer settings and BUILDER (the code
that splits, trains the tokenizer and tokenizes), so any change rebuilds and an unchanged corpus is never
tokenized twice. A dataset is built in a temporary folder and renamed into place, so a folder under its
final name is always complete; opening it checks each file against the sha256 in meta.json, so a file
damaged since is refused, never trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cratelab.config import DataConfig
from cratelab.data.corpus import Document, code_version, default_cache_dir, load_documents, split_of
from cratelab.data.tokenizer import Tokenizer, load_tokenizer
from cratelab.errors import CratelabError
from cratelab.io import building_folder, read_json, read_json_object, sha256_file
from cratelab.layout import DATA, DATASET_FORMAT, DATASET_META, DATASET_TOKENIZER, split_tokens_file

BUILDER = code_version("corpus", "tokenizer", "shards", libraries=("tokenizers", "tiktoken"))
SPLITS = ("train", "val")
MIN_SPLIT_TOKENS = 1024  # below this a split cannot fill even one evaluation batch of a small model
BATCH_DOCS = 256  # documents per encode_batch call


@dataclass
class TokenDataset:
    path: Path
    train: np.memmap  # read-only, 1-D token ids
    val: np.memmap
    meta: dict[str, Any]
    tokenizer: Tokenizer

    @classmethod
    def open(cls, path: str | Path) -> TokenDataset:
        path = Path(path)
        if not (path / DATASET_META).is_file():
            raise CratelabError(f"{path} is not a prepared dataset (no meta.json): run `cratelab prepare`")
        again = f"delete {path} and run `cratelab prepare` again"
        meta = read_json_object(path / DATASET_META, what="dataset description")
        try:
            dtype = np.dtype(meta["dtype"])
            expected = {**{split_tokens_file(s): meta["splits"][s]["sha256"] for s in SPLITS},
                        DATASET_TOKENIZER: meta["tokenizer_sha256"]}
        except (KeyError, TypeError):
            raise CratelabError(f"{path / 'meta.json'}: not a dataset description of this cratelab; {again}") from None
        for name, sha256 in expected.items():
            digest = sha256_file(path / name) if (path / name).is_file() else "none (missing)"
            if digest != sha256:
                raise CratelabError(f"{path / name}: damaged dataset file (sha256 {digest}, meta.json says "
                                    f"{sha256}); {again}")
        tokenizer = Tokenizer.from_dict(read_json(path / DATASET_TOKENIZER, what="tokenizer"))
        arrays = {s: np.memmap(path / split_tokens_file(s), dtype=dtype, mode="r") for s in SPLITS}
        return cls(path, arrays["train"], arrays["val"], meta, tokenizer)

    def identity(self) -> dict[str, Any]:
        """What a run measured on this dataset was measured on (a run folder's data.json): the sha256 of the
        token files, of the tokenizer and of the corpus text, the settings and the builder, and where it lives."""
        splits = self.meta["splits"]
        return {"train_sha256": splits["train"]["sha256"], "val_sha256": splits["val"]["sha256"],
                "train_tokens": splits["train"]["tokens"], "val_tokens": splits["val"]["tokens"],
                "tokenizer_sha256": self.meta["tokenizer_sha256"], "corpus_sha256": self.meta["corpus_sha256"],
                "data": self.meta["data"], "builder": self.meta["builder"], "path": str(self.path.resolve())}


def run_data_identity(run_dir: str | Path) -> dict[str, Any] | None:
    """The data a training run was trained and evaluated on (TokenDataset.identity, from its data.json;
    "train_sha256" names the tokenized training data); None for a folder `cratelab train` did not make (an
    imported checkpoint)."""
    path = Path(run_dir) / DATA
    if not path.is_file():
        return None
    return read_json_object(path, what="data identity", keys=("train_sha256", "val_sha256"))


def _documents(cfg: DataConfig, cache_dir: Path, progress: bool) -> Callable[[], Iterator[Document]]:
    """A function that yields the corpus' documents afresh on each call (we read them in passes)."""
    corpus = cfg.corpus
    if corpus.startswith("hf:"):
        from cratelab.data.hf import fetch_hf_corpus

        corpus = str(fetch_hf_corpus(cfg, cache_dir, progress))
    load_documents(corpus, cache_dir)  # raise a missing-corpus error before any work
    return lambda: load_documents(corpus, cache_dir)


def _used_settings(cfg: DataConfig) -> dict[str, Any]:
    """The DataConfig fields that change the tokens (cache_dir does not)."""
    used = {"corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction}
    if cfg.tokenizer == "bpe":
        used["bpe_vocab_size"] = cfg.bpe_vocab_size
    if cfg.corpus.startswith("hf:"):
        used.update({k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith("hf_")})
    return used


def _scan(docs: Iterator[Document], val_fraction: float) -> tuple[str, dict[str, int], int]:
    """Content hash of the corpus (sha256 of its documents as JSON lines [source, doc_id, text]),
    documents per split, and total UTF-8 bytes of text."""
    h, counts, n_bytes = hashlib.sha256(), dict.fromkeys(SPLITS, 0), 0
    for d in docs:
        raw = json.dumps([d.source, d.doc_id, d.text], ensure_ascii=False).encode("utf-8")
        h.update(raw + b"\n")
        counts[split_of(d.doc_id, val_fraction)] += 1
        n_bytes += len(d.text.encode("utf-8"))
    return h.hexdigest(), counts, n_bytes


def _tokenize(documents: Callable[[], Iterator[Document]], tok: Tokenizer, val_fraction: float, out: Path,
              total_bytes: int, progress: bool) -> dict[str, Any]:
    """Write <split>.bin under out; return the counts and hashes for meta.json."""
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    zero = {"documents": 0, "tokens": 0, "bytes": 0}
    splits = {s: dict(zero) for s in SPLITS}
    sources: dict[str, dict[str, dict[str, int]]] = {}
    hashes = {s: hashlib.sha256() for s in SPLITS}
    files = {s: open(out / split_tokens_file(s), "wb") for s in SPLITS}
    docs = documents()
    try:
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize", disable=not progress) as bar:
            while batch := list(itertools.islice(docs, BATCH_DOCS)):
                for doc, ids in zip(batch, tok.encode_batch([d.text for d in batch])):
                    split = split_of(doc.doc_id, val_fraction)
                    data = np.array(ids + [tok.eot_id], dtype=dtype).tobytes()
                    files[split].write(data)
                    hashes[split].update(data)
                    n_bytes = len(doc.text.encode("utf-8"))
                    per_source = sources.setdefault(doc.source, {s: dict(zero) for s in SPLITS})
                    for counts in (splits[split], per_source[split]):
                        counts["documents"] += 1
                        counts["tokens"] += len(ids) + 1
                        counts["bytes"] += n_bytes
                    bar.update(n_bytes)
    finally:
        for f in files.values():
            f.close()
    return {"dtype": np.dtype(dtype).name,
            "splits": {s: {**splits[s], "sha256": hashes[s].hexdigest()} for s in SPLITS},
            "sources": dict(sorted(sources.items()))}


def _dataset_key(corpus_sha256: str, used: dict[str, Any]) -> str:
    """Readable and content-addressed: <corpus>-<tokenizer>-<hash of the corpus text, settings and builder>."""
    digest = hashlib.sha256(json.dumps({"builder": BUILDER, "corpus_sha256": corpus_sha256, **used},
                                       sort_keys=True).encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", used["corpus"]).strip("-.")[-40:] or "corpus"
    return f"{slug}-{used['tokenizer']}{used.get('bpe_vocab_size', '')}-{digest[:12]}"


def prepare_dataset(cfg: DataConfig, progress: bool = True) -> TokenDataset:
    """Tokenize cfg's corpus into cached train/val shards (built once, then reused)."""
    cache_dir = default_cache_dir(cfg.cache_dir)
    documents = _documents(cfg, cache_dir, progress)
    corpus_sha256, doc_counts, total_bytes = _scan(documents(), cfg.val_fraction)
    for split in SPLITS:
        if doc_counts[split] == 0:
            raise CratelabError(f"the {split} split is empty: data.corpus = {cfg.corpus!r} has "
                                f"{sum(doc_counts.values())} documents and data.val_fraction = {cfg.val_fraction} "
                                f"(the split is by whole document); add documents or change data.val_fraction")
    used = _used_settings(cfg)
    key = _dataset_key(corpus_sha256, used)
    path = cache_dir / "datasets" / key
    if (path / DATASET_META).is_file():
        return TokenDataset.open(path)

    # another process (a DDP rank) may finish the same folder first: its copy is then kept
    with building_folder(path, keep_existing=True) as tmp:
        train_texts = (d.text for d in documents() if split_of(d.doc_id, cfg.val_fraction) == "train")
        tok = load_tokenizer(cfg.tokenizer, train_texts, cfg.bpe_vocab_size, progress)
        if cfg.tokenizer == "bpe" and tok.vocab_size < cfg.bpe_vocab_size:
            print(f"warning: data.bpe_vocab_size = {cfg.bpe_vocab_size}, but the BPE found only {tok.vocab_size:,} "
                  f"tokens in data.corpus = {cfg.corpus!r} (no more pairs to merge): the vocabulary has "
                  f"{tok.vocab_size:,} tokens", file=sys.stderr)
        counts = _tokenize(documents, tok, cfg.val_fraction, tmp, total_bytes, progress)
        for split in SPLITS:
            n = counts["splits"][split]["tokens"]
            if n < MIN_SPLIT_TOKENS:
                raise CratelabError(f"the {split} split has only {n} tokens (at least {MIN_SPLIT_TOKENS} are "
                                    f"needed): use a larger corpus than {cfg.corpus!r} or change data.val_fraction")
        tokenizer = {"name": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id}
        (tmp / DATASET_TOKENIZER).write_text(json.dumps(tok.to_dict()), encoding="utf-8")
        meta = {"format": DATASET_FORMAT, "builder": BUILDER, "tokenizer": tokenizer, **counts,
                "tokenizer_sha256": sha256_file(tmp / DATASET_TOKENIZER), "corpus_sha256": corpus_sha256, "data": used}
        (tmp / DATASET_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return TokenDataset.open(path)
