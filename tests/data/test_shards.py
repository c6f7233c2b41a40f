import dataclasses
from pathlib import Path
import hashlib
import json
import unicodedata

import numpy as np
import pytest

from cratelab.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from cratelab.data import corpus, shards
from cratelab.data.corpus import code_version, split_of
from cratelab.data.shards import TokenDataset, prepare_dataset, run_data_identity
from cratelab.errors import CratelabError
from cratelab.layout import DATA


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


def test_a_dataset_built_by_other_code_is_never_reused(fixture_dataset, fixture_cfg, monkeypatch):
    monkeypatch.setattr(shards, "BUILDER", "another builder")  # what an edit of the tokenizer or shard code does
    rebuilt = prepare_dataset(fixture_cfg, progress=False)
    assert rebuilt.path != fixture_dataset.path and rebuilt.path.parent == fixture_dataset.path.parent
    assert rebuilt.meta["builder"] == "another builder" and fixture_dataset.meta["builder"] == shards.code_version(
        "corpus", "tokenizer", "shards", libraries=("tokenizers", "tiktoken"))
    assert TokenDataset.open(fixture_dataset.path).meta == fixture_dataset.meta  # the old one is left as it was


@pytest.mark.parametrize("change", ["module source", "library version", "unicode database"])
def test_the_builder_version_follows_the_code_the_libraries_and_unicode(monkeypatch, tmp_path, change):
    before = code_version("corpus", libraries=("tokenizers",))
    if change == "module source":  # corpus.py with one more line
        source = corpus.resources.files("cratelab.data").joinpath("corpus.py").read_bytes()
        (tmp_path / "corpus.py").write_bytes(source + b"# an edit\n")
        monkeypatch.setattr(corpus.resources, "files", lambda package: tmp_path)
    elif change == "library version":
        monkeypatch.setattr(corpus.importlib.metadata, "version", lambda name: "0.0.0")
    else:
        monkeypatch.setattr(unicodedata, "unidata_version", "1.0.0")
    assert code_version("corpus", libraries=("tokenizers",)) != before


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {  # name: (damage to a copy of the fixture dataset, what the refusal says: a regular expression)
    "train.bin byte flipped": (lambda d: _flip_a_byte(d / "train.bin"), r"train\.bin: damaged dataset file \(sha256"),
    "val.bin truncated": (lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes()[:-2]),
                          r"val\.bin: damaged dataset file"),
    "train.bin missing": (lambda d: (d / "train.bin").unlink(), r"train\.bin: damaged dataset file \(sha256 none"),
    "tokenizer.json garbage": (lambda d: (d / "tokenizer.json").write_bytes(b"\x00{"), r"tokenizer\.json: damaged"),
    "tokenizer.json other JSON": (lambda d: (d / "tokenizer.json").write_text('{"name": "bpe", "json": "{}"}'),
                                  r"tokenizer\.json: damaged"),
    "meta.json garbage": (lambda d: (d / "meta.json").write_bytes(b"{\x00"), r"meta\.json: not a valid JSON"),
    "meta.json other JSON": (lambda d: (d / "meta.json").write_text('{"dtype": "uint16"}'),
                             r"meta\.json: not a dataset description of this cratelab"),
    "meta.json a list": (lambda d: (d / "meta.json").write_text("[]"), r"meta\.json: not a valid dataset description"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_dataset_is_refused(fixture_dataset, fixture_cfg, damage):
    damage_fn, message = DAMAGES[damage]
    copy_cfg = dataclasses.replace(fixture_cfg, cache_dir=str(Path(fixture_cfg.cache_dir) / damage.replace(" ", "-")))
    copy = Path(copy_cfg.cache_dir) / "datasets" / fixture_dataset.path.name
    copy.mkdir(parents=True)
    for file in fixture_dataset.path.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    damage_fn(copy)
    with pytest.raises(CratelabError, match=message) as err:
        prepare_dataset(copy_cfg, progress=False)  # what every command that reads the data calls
    assert "\n" not in str(err.value) and ("delete" in str(err.value))
    with pytest.raises(CratelabError, match="no meta.json"):
        TokenDataset.open(copy.parent)


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


def test_a_run_folder_names_the_data_it_was_trained_on(fixture_dataset, fixture_cfg, tmp_path):
    from cratelab.train import train

    cfg = RunConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), data=fixture_cfg,
                    train=TrainConfig(batch_size=2, max_steps=2, eval_interval=2, warmup_steps=1, device="cpu",
                                      threads=1), eval=EvalConfig(tokens=64))
    out = tmp_path / "run"
    assert run_data_identity(out) is None  # a folder trained before runs recorded their data
    train(cfg, out, progress=False)
    data = run_data_identity(out)
    assert data == fixture_dataset.identity() == json.loads((out / DATA).read_text())
    assert data["train_sha256"] == hashlib.sha256((fixture_dataset.path / "train.bin").read_bytes()).hexdigest()
    assert data["val_sha256"] == fixture_dataset.meta["splits"]["val"]["sha256"]

    # resuming on other tokens (a cache built again by other code, with other content) is another run
    (out / DATA).write_text(json.dumps({**data, "train_sha256": "0" * 64}))
    with pytest.raises(CratelabError, match=f"{out} was trained on other token data .train.bin sha256 0000.*--fresh"):
        train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=4)), out, progress=False)
    (out / DATA).write_text("[]")
    with pytest.raises(CratelabError, match="data.json: not a valid data identity"):
        run_data_identity(out)
