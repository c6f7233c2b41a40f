"""Opt-in real data at scale: documents streamed from a Hugging Face dataset (`pip install datasets`).

``data.corpus = "hf:NAME"`` or ``"hf:NAME:CONFIG"``; NAME is a Hub dataset or a local path (a folder
saved with ``save_to_disk``, or anything ``load_dataset`` reads). The documents are streamed once
into a local corpus folder, which the rest of the data layer then reads like any other corpus.
Nothing is downloaded unless data.corpus asks for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cratelab.config import DataConfig
from cratelab.data.corpus import Document, code_version, write_documents
from cratelab.errors import CratelabError
from cratelab.io import sha256_file, write_text
from cratelab.layout import HF_DOCUMENTS, HF_DOCUMENTS_SHA256

# English text averages about 4 UTF-8 bytes per BPE token; a byte budget keeps the documents
# independent of the tokenizer (which may itself be trained on them).
BYTES_PER_TOKEN = 4
HF_BUILDER = code_version("corpus", "hf")  # _stream and write_documents make the folder's documents


def parse_hf_corpus(corpus: str) -> tuple[str, str | None]:
    """"hf:NAME[:CONFIG]" -> (NAME, CONFIG or None)."""
    name, _, config = corpus.removeprefix("hf:").partition(":")
    if not name:
        raise CratelabError(f"data.corpus = {corpus!r}: expected 'hf:NAME' or 'hf:NAME:CONFIG'")
    return name, config or None


def _open_rows(name: str, config: str | None, split: str) -> Iterable[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise CratelabError(f"data.corpus = 'hf:{name}' needs the Hugging Face `datasets` package: "
                            "`pip install datasets`") from None
    path = Path(name).expanduser()
    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():  # save_to_disk output
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise CratelabError(f"{name} has splits {sorted(ds)}; set data.hf_split to one of them")
                ds = ds[split]
            return ds
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except CratelabError:
        raise
    except Exception as err:  # datasets raises many types: unknown name, bad config, no network, ...
        raise CratelabError(f"could not open Hugging Face dataset {name!r} (config {config!r}, split {split!r}): "
                            f"{err}") from err


def _stream(rows: Iterable[dict[str, Any]], source: str, cfg: DataConfig, progress: bool) -> Iterator[Document]:
    budget, total = cfg.hf_max_tokens * BYTES_PER_TOKEN, 0
    with tqdm(total=budget, unit="B", unit_scale=True, desc=source, disable=not progress) as bar:
        for i, row in enumerate(rows):
            if total >= budget:
                break
            if cfg.hf_text_field not in row:
                raise CratelabError(f"Hugging Face dataset {source!r} has no field data.hf_text_field = "
                                    f"{cfg.hf_text_field!r}; its fields: {', '.join(row)}")
            text = row[cfg.hf_text_field]
            if isinstance(text, str) and text.strip():
                n = len(text.encode("utf-8"))
                total += n
                bar.update(n)
                yield Document(source, f"{source}/{cfg.hf_split}/{i}", text)


def fetch_hf_corpus(cfg: DataConfig, cache_dir: Path, progress: bool = True) -> Path:
    """Stream about cfg.hf_max_tokens tokens of documents into ``cache_dir/corpus/hf/<name>-<hash>/``
    (cached) and return that folder, a corpus directory for load_documents."""
    name, config = parse_hf_corpus(cfg.corpus)
    settings = json.dumps([name, config, cfg.hf_split, cfg.hf_text_field, cfg.hf_max_tokens, HF_BUILDER])
    source = re.sub(r"[^A-Za-z0-9_.]+", "-", Path(name).name or name).strip("-.") or "hf"
    out = Path(cache_dir) / "corpus" / "hf" / f"{source}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"
    documents, checksum = out / HF_DOCUMENTS, out / HF_DOCUMENTS_SHA256  # the checksum is written last
    complete = checksum.is_file() and documents.is_file()
    if not (complete and checksum.read_text(encoding="utf-8") == sha256_file(documents)):
        rows = _open_rows(name, config, cfg.hf_split)  # not streamed yet, cut short, or damaged since: stream again
        out.mkdir(parents=True, exist_ok=True)
        write_documents(documents, _stream(rows, source, cfg, progress))
        write_text(checksum, sha256_file(documents))
    return out
