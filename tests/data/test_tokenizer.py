import json

import numpy as np
import pytest

from cratelab.data import tokenizer as tokenizer_module
from cratelab.data.tokenizer import EOT, BPETokenizer, GPT2Tokenizer, Tokenizer, load_tokenizer
from cratelab.errors import CratelabError

SAMPLE = "Hello world! Naïve café, 日本語 and 🎉 emoji;\n\n  indented\ttab <|endoftext|> kept as text."


@pytest.fixture(params=["gpt2", "bpe"])
def tok(request, gpt2, bpe) -> Tokenizer:
    return {"gpt2": gpt2, "bpe": bpe}[request.param]


def test_gpt2_matches_known_r50k_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert (gpt2.name, gpt2.vocab_size, gpt2.eot_id) == ("gpt2", 50257, 50256)
    assert gpt2.token_str(262) == " the"
    assert gpt2.token_byte_lengths()[[262, 50256]].tolist() == [4, 0]


def test_round_trip_on_fixture(tok, fixture_docs):
    texts = [d.text for d in fixture_docs]
    ids = tok.encode_batch(texts)
    assert ids[:5] == [tok.encode(t) for t in texts[:5]]
    assert all(tok.decode(i) == t for i, t in zip(ids, texts))
    lengths = tok.token_byte_lengths()
    assert lengths.shape == (tok.vocab_size,)
    assert all(int(lengths[i].sum()) == len(t.encode("utf-8")) for i, t in zip(ids, texts))


def test_special_token_text_is_ordinary_text(tok):
    ids = tok.encode(SAMPLE)
    assert tok.eot_id not in ids
    assert tok.decode(ids) == SAMPLE
    assert tok.decode([*ids, tok.eot_id]) == SAMPLE + EOT
    assert int(tok.token_byte_lengths()[ids].sum()) == len(SAMPLE.encode("utf-8"))


def test_token_str_shows_partial_utf8_as_replacement(tok):
    ids = tok.encode("🎉")  # 4 bytes, not a single token in either vocabulary
    assert len(ids) > 1 and "\ufffd" in tok.token_str(ids[0])
    assert tok.token_str(tok.eot_id) == EOT


def test_to_dict_round_trip(tok):
    d = json.loads(json.dumps(tok.to_dict()))
    again = Tokenizer.from_dict(d)
    assert (again.name, again.vocab_size, again.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)
    np.testing.assert_array_equal(again.token_byte_lengths(), tok.token_byte_lengths())


def test_bpe_is_deterministic_and_sized(fixture_docs, bpe):
    texts = [d.text for d in fixture_docs[:10]]
    a, b = BPETokenizer.train(texts, 400), BPETokenizer.train(texts, 400)
    assert a.to_dict() == b.to_dict()
    assert (a.name, a.vocab_size) == ("bpe", 400)
    assert "json" in bpe.to_dict() and bpe.vocab_size == 512


def test_load_tokenizer():
    assert load_tokenizer("gpt2").name == "gpt2"
    assert load_tokenizer("bpe", ["some text to train on"] * 3, 300).name == "bpe"
    with pytest.raises(CratelabError, match="expected 'gpt2' or 'bpe'"):
        load_tokenizer("sentencepiece")


def test_missing_gpt2_file_says_how_to_install(monkeypatch):
    monkeypatch.setattr(tokenizer_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CratelabError, match=r"pip install --no-deps openai-whisper==20250625"):
        GPT2Tokenizer()
