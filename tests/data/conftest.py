from pathlib import Path

import pytest

from cratelab.config import DataConfig
from cratelab.data import BPETokenizer, GPT2Tokenizer, load_documents, prepare_dataset, split_of

SMALL_VOCAB = 512  # trains in well under a second on the fixture


@pytest.fixture(scope="session")
def fixture_docs():
    return list(load_documents("fixture", Path("unused")))


@pytest.fixture(scope="session")
def gpt2():
    return GPT2Tokenizer()


@pytest.fixture(scope="session")
def bpe(fixture_docs):
    return BPETokenizer.train([d.text for d in fixture_docs if split_of(d.doc_id, 0.05) == "train"], SMALL_VOCAB)


@pytest.fixture(scope="session")
def fixture_cfg(tmp_path_factory):
    return DataConfig(corpus="fixture", tokenizer="bpe", bpe_vocab_size=SMALL_VOCAB,
                      cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def fixture_dataset(fixture_cfg):
    return prepare_dataset(fixture_cfg, progress=False)
