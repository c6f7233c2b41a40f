"""Data layer: corpora of whole documents, tokenizers, cached token shards."""

from cratelab.data.corpus import (
    SOURCES,
    Document,
    build_corpus,
    default_cache_dir,
    load_documents,
    split_of,
)
from cratelab.data.shards import TokenDataset, prepare_dataset, run_data_identity
from cratelab.data.tokenizer import BPETokenizer, GPT2Tokenizer, Tokenizer, load_tokenizer

__all__ = [
    "SOURCES",
    "BPETokenizer",
    "Document",
    "GPT2Tokenizer",
    "TokenDataset",
    "Tokenizer",
    "build_corpus",
    "default_cache_dir",
    "load_documents",
    "load_tokenizer",
    "prepare_dataset",
    "run_data_identity",
    "split_of",
]
