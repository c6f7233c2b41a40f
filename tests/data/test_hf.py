import sys

import numpy as np
import pytest

from cratelab.config import DataConfig
from cratelab.data.corpus import load_documents, split_of
from cratelab.data.hf import BYTES_PER_TOKEN, fetch_hf_corpus, parse_hf_corpus
from cratelab.data.shards import prepare_dataset
from cratelab.errors import CratelabError


def test_parse_hf_corpus():
    assert parse_hf_corpus("hf:Skylion007/openwebtext") == ("Skylion007/openwebtext", None)
    assert parse_hf_corpus("hf:wikitext:wikitext-103-raw-v1") == ("wikitext", "wikitext-103-raw-v1")
    with pytest.raises(CratelabError, match="hf:NAME"):
        parse_hf_corpus("hf:")


def test_missing_datasets_package_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    cfg = DataConfig(corpus="hf:some/dataset", cache_dir=str(tmp_path))
    with pytest.raises(CratelabError, match="pip install datasets"):
        fetch_hf_corpus(cfg, tmp_path, progress=False)


@pytest.fixture
def local_dataset(tmp_path, fixture_docs):
    datasets = pytest.importorskip("datasets")
    rows = {"body": [d.text for d in fixture_docs] + [""], "n": list(range(len(fixture_docs) + 1))}
    path = tmp_path / "my-dataset"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(path))
    return path


def test_local_dataset_streams_tokenizes_and_caches(local_dataset, fixture_docs, tmp_path, monkeypatch):
    cfg = DataConfig(corpus=f"hf:{local_dataset}", tokenizer="gpt2", hf_text_field="body", val_fraction=0.1,
                     hf_max_tokens=200_000 // BYTES_PER_TOKEN, cache_dir=str(tmp_path / "cache"))
    ds = prepare_dataset(cfg, progress=False)
    folder = fetch_hf_corpus(cfg, tmp_path / "cache", progress=False)
    docs = list(load_documents(str(folder), tmp_path))
    # streaming stops once about hf_max_tokens tokens' worth of text has been read
    assert 200_000 <= sum(len(d.text.encode()) for d in docs) < 200_000 + max(len(d.text.encode()) for d in fixture_docs)
    assert [d.text for d in docs] == [d.text for d in fixture_docs[: len(docs)]]
    assert docs[0].doc_id == "my-dataset/train/0" and {d.source for d in docs} == {"my-dataset"}
    n_val = sum(split_of(d.doc_id, 0.1) == "val" for d in docs)
    assert ds.meta["splits"]["val"]["documents"] == n_val > 0
    assert (np.asarray(ds.train) == ds.tokenizer.eot_id).sum() == len(docs) - n_val
    assert ds.meta["data"]["hf_text_field"] == "body"

    monkeypatch.setattr("cratelab.data.hf._open_rows", lambda *a: pytest.fail("streamed a cached corpus again"))
    assert prepare_dataset(cfg, progress=False).path == ds.path


def test_a_damaged_streamed_corpus_is_streamed_again(local_dataset, tmp_path):
    cfg = DataConfig(corpus=f"hf:{local_dataset}", hf_text_field="body", hf_max_tokens=1000, cache_dir=str(tmp_path))
    documents = fetch_hf_corpus(cfg, tmp_path, progress=False) / "documents.jsonl"
    good = documents.read_bytes()
    documents.write_bytes(good.replace(b"a", b"b", 1))
    assert fetch_hf_corpus(cfg, tmp_path, progress=False) == documents.parent
    assert documents.read_bytes() == good


def test_local_dataset_errors(local_dataset, tmp_path):
    cfg = DataConfig(corpus=f"hf:{local_dataset}", hf_text_field="missing", cache_dir=str(tmp_path))
    with pytest.raises(CratelabError, match="no field data.hf_text_field = 'missing'; its fields: body, n"):
        fetch_hf_corpus(cfg, tmp_path, progress=False)
    cfg = DataConfig(corpus=f"hf:{local_dataset}", hf_split="validation", cache_dir=str(tmp_path))
    with pytest.raises(CratelabError, match=r"splits \['train'\]"):
        fetch_hf_corpus(cfg, tmp_path, progress=False)
    cfg = DataConfig(corpus=f"hf:{tmp_path / 'nowhere'}", cache_dir=str(tmp_path))
    with pytest.raises(CratelabError, match="could not open Hugging Face dataset"):
        fetch_hf_corpus(cfg, tmp_path, progress=False)
