import dataclasses
import hashlib

import numpy as np
import pytest

from cratelab.config import DataConfig
from cratelab.data import shards
from cratelab.data.corpus import split_of
from cratelab.data.shards import TokenDataset, prepare_dataset
from cratelab.errors import CratelabError


def _documents_of(tokens: np.ndarray, eot: int) -> list[list[int]]:
    ends = np.flatnonzero(tokens == eot)
    assert len(ends) and ends[-1] == len(tokens) - 1  # every document ends with EOT
    return [tokens[a + 1:b].tolist() for a, b in zip([-1, *ends[:-1]], ends)]


def test_shards_round_trip(fixture_dataset, fixture_docs):
    ds, tok = fixture_dataset, fixture_dataset.tokenizer
    for split, tokens in (("train", ds.train), ("val", ds.val)):
        expected = [d.text for d in fixture_docs if split_of(d.doc_id, 0.05) == split]
        assert [tok.decode(ids) for ids in _documents_of(np.asarray(tokens), tok.eot_id)] == expected
        counts = ds.meta["splits"][split]
        assert counts["documents"] == len(expected) and counts["tokens"] == len(tokens)
        assert counts["bytes"] == sum(len(t.encode("utf-8")) for t in expected)
        assert counts["sha256"] == hashlib.sha256((ds.path / f"{split}.bin").read_bytes()).hexdigest()
        assert tokens.dtype == np.uint16 and not tokens.flags.writeable
    sources = ds.meta["sources"]
    assert sum(s["train"]["tokens"] + s["val"]["tokens"] for s in sources.values()) == len(ds.train) + len(ds.val)
    assert ds.meta["tokenizer"] == {"name": "bpe", "vocab_size": 512, "eot_id": tok.eot_id}
    assert ds.meta["data"] == {"corpus": "fixture", "tokenizer": "bpe", "val_fraction": 0.05, "bpe_vocab_size": 512}


def test_bpe_is_trained_on_the_training_split_only(fixture_dataset, fixture_docs):
    from cratelab.data.tokenizer import BPETokenizer

    train = [d.text for d in fixture_docs if split_of(d.doc_id, 0.05) == "train"]
    assert fixture_dataset.tokenizer.to_dict() == BPETokenizer.train(train, 512).to_dict()


def test_cache_is_reused(fixture_dataset, fixture_cfg, monkeypatch):
    monkeypatch.setattr(shards, "load_tokenizer", lambda *a, **k: pytest.fail("rebuilt a cached dataset"))
    again = prepare_dataset(fixture_cfg, progress=False)
    assert again.path == fixture_dataset.path and again.meta == fixture_dataset.meta
    assert TokenDataset.open(fixture_dataset.path).meta == fixture_dataset.meta


def test_settings_change_the_key(fixture_dataset, fixture_cfg):
    gpt2 = prepare_dataset(dataclasses.replace(fixture_cfg, tokenizer="gpt2"), progress=False)
    assert gpt2.path != fixture_dataset.path and gpt2.path.parent == fixture_dataset.path.parent
    assert gpt2.meta["tokenizer"]["vocab_size"] == 50257 and gpt2.meta["dtype"] == "uint16"
    assert gpt2.meta["splits"]["val"]["documents"] == fixture_dataset.meta["splits"]["val"]["documents"]
    assert (np.asarray(gpt2.val) == 50256).sum() == gpt2.meta["splits"]["val"]["documents"]
    assert not [p for p in gpt2.path.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_damaged_dataset_is_reported(fixture_dataset, tmp_path):
    with pytest.raises(CratelabError, match="no meta.json"):
        TokenDataset.open(tmp_path)
    for name in ("meta.json", "tokenizer.json", "train.bin"):
        (tmp_path / name).write_bytes((fixture_dataset.path / name).read_bytes())
    (tmp_path / "val.bin").write_bytes((fixture_dataset.path / "val.bin").read_bytes()[:-2])
    with pytest.raises(CratelabError, match="delete"):
        TokenDataset.open(tmp_path)


def _text_corpus(root, doc_ids, words=400):
    root.mkdir()
    for i in doc_ids:
        (root / i).write_text(" ".join(f"word{j % 50}" for j in range(words)), encoding="utf-8")
    return str(root)


def test_empty_val_split(tmp_path):
    corpus = _text_corpus(tmp_path / "texts", [f"{i}.txt" for i in range(5)])
    cfg = DataConfig(corpus=corpus, tokenizer="gpt2", val_fraction=0.001, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CratelabError, match="the val split is empty.*val_fraction"):
        prepare_dataset(cfg, progress=False)


def test_too_small_split(tmp_path):
    names = [f"{i}.txt" for i in range(40)]
    val = [n for n in names if split_of(n, 0.1) == "val"][:1]
    corpus = _text_corpus(tmp_path / "texts", [n for n in names if split_of(n, 0.1) == "train"][:3] + val, words=20)
    cfg = DataConfig(corpus=corpus, tokenizer="gpt2", val_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CratelabError, match="split has only"):
        prepare_dataset(cfg, progress=False)
    assert not list((tmp_path / "cache" / "datasets").iterdir())  # nothing half-built left behind


def test_missing_default_corpus(tmp_path):
    with pytest.raises(CratelabError, match="cratelab prepare"):
        prepare_dataset(DataConfig(cache_dir=str(tmp_path)), progress=False)


def test_a_bpe_vocabulary_the_corpus_cannot_fill_is_reported(tmp_path, capsys):
    corpus = _text_corpus(tmp_path / "texts", [f"{i}.txt" for i in range(40)])  # 50 distinct words in all
    cfg = DataConfig(corpus=corpus, bpe_vocab_size=65535, val_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    dataset = prepare_dataset(cfg, progress=False)
    assert dataset.tokenizer.vocab_size < 1000
    assert (f"warning: data.bpe_vocab_size = 65535, but the BPE found only {dataset.tokenizer.vocab_size:,} tokens"
            in capsys.readouterr().err)
