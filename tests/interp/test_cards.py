"""HTML neuron cards: corpus text is escaped, pages render in headless Chromium, no script runs."""

import json
import os
import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

from cratelab.config import InterpConfig
from cratelab.interp import build_records, get_protocol, make_backend
from cratelab.interp.cards import histogram_svg, record_html, write_cards
from cratelab.interp.run import encode_simulation, score_protocols, summarize

from .synthetic import EOT, planted_stream

ALERT = "<script>alert(1)</script>"
PWN = "<script>document.body.setAttribute('data-pwned','1')</script>"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder of planted neurons whose top tokens are hostile strings (the 'cat' and 'zebra' neurons)."""
    tokens, acts = planted_stream(n_rows=48)
    tokens = [[{" cat": ALERT, " zebra": PWN, " and": " fish & chips"}.get(t, t) for t in row] for row in tokens]
    records = build_records(tokens, acts, eot_token=EOT)
    explainer, simulator = make_backend("token-pattern")
    protocols = [get_protocol(p) for p in InterpConfig().protocol_list()]
    out = tmp_path_factory.mktemp("cards") / "run"
    out.mkdir()
    rows, sims = [], []
    for h in range(records.n_neurons):
        for s, sim in score_protocols(records.neuron(h), protocols, explainer, simulator):
            rows.append(s.to_row("token-pattern"))
            sims.append({"layer": 0, "neuron": h, "protocol": s.protocol, **encode_simulation(sim)})
    (out / "simulations.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sims))
    names = [p.name for p in protocols]
    summary = {"checkpoint": "runs/<b>x</b>", "step": 1, "method": "token-pattern", "protocols": names,
               "n_tokens": records.n_tokens, "n_neurons": 5, "neurons_per_layer": 5,
               "settings": {"confidence": 0.95}, **summarize(rows, [0], names, InterpConfig(bootstrap=100))}
    write_cards(out, records={0: records}, rows=rows, summary=summary)
    return out


def pages(run_dir):
    return {p: p.read_text(encoding="utf-8") for p in (run_dir / "cards").rglob("*.html")}


def test_a_card_per_scored_neuron_and_an_index_sorted_by_score(run_dir):
    assert sorted(p.name for p in (run_dir / "cards" / "layer0").iterdir()) == [f"neuron{h}.html" for h in range(5)]
    index = (run_dir / "cards" / "index.html").read_text()
    order = [int(h) for h in re.findall(r'href="layer0/neuron(\d+)\.html"', index)]
    assert sorted(order) == list(range(5)) and order[-1] == 3  # the dead neuron (unscorable) comes last
    card = (run_dir / "cards" / "layer0" / "neuron0.html").read_text()
    for part in ("Explanations and scores", "Activation histogram", "<svg", "Top-activating records",
                 "Quantile records", "Random records", "Scoring records: top-and-random", "Scoring records: anthropic"):
        assert part in card
    dead = (run_dir / "cards" / "layer0" / "neuron3.html").read_text()
    assert "unscorable: real activations are constant" in dead


def test_all_corpus_text_is_escaped(run_dir):
    for path, text in pages(run_dir).items():
        assert "<script" not in text.lower(), path  # no script element at all, hostile or ours
        assert "<b>x</b>" not in text, path
    card = (run_dir / "cards" / "layer0" / "neuron0.html").read_text()  # the cat neuron fires on ALERT
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card and "fish &amp; chips" in card
    index = (run_dir / "cards" / "index.html").read_text()
    assert "&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in index  # inside the explanation
    assert "runs/&lt;b&gt;x&lt;/b&gt;" in index


def test_record_intensity_is_proportional_to_activation():
    html = record_html(["a", "b", "c", "<&>"], np.array([0.0, 1.0, 2.0, 4.0]), 4.0)
    assert html.count("<span") == 3  # a token at zero is plain text
    assert 'class="a5" title="1"' in html and 'class="a10"' in html and 'class="a20" title="4">&lt;&amp;&gt;' in html
    svg = histogram_svg(np.array([0.0, 0.0, 1.0, 2.0]), np.array([2.0]), 2.0)
    assert svg.startswith("<svg") and svg.count("<rect") == 4 and "50% zero" in svg  # 3 sample bars, 1 top bar


def read_png(path):
    """(width, height, RGB pixels) of an 8-bit RGB or RGBA PNG: a tiny decoder, no dependency."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], np.zeros(stride, dtype=np.int64)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if f == 0:
            cur = line
        elif f == 1:  # Sub: a running sum along the row, per channel
            cur = np.cumsum(line.reshape(width, bpp), axis=0).ravel() % 256
        elif f == 2:  # Up
            cur = (line + prev) % 256
        else:  # Average and Paeth depend on the pixel to the left: byte by byte
            cur, up = line.tolist(), prev.tolist()
            for i in range(stride):
                a, b = (cur[i - bpp] if i >= bpp else 0), up[i]
                if f == 3:
                    pred = (a + b) // 2
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p_ = a + b - c
                    pa, pb, pc = abs(p_ - a), abs(p_ - b), abs(p_ - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (cur[i] + pred) % 256
            cur = np.array(cur, dtype=np.int64)
        rows.append(cur)
        prev = cur
    return width, height, np.stack(rows).reshape(height, width, bpp)[..., :3].astype(np.uint8)


def chromium(*args, tmp_path):
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="headless Chromium is not installed (apt-get install -y chromium)")


@pytest.mark.e2e
@needs_chromium
@pytest.mark.parametrize("page", ["index.html", "layer0/neuron0.html"])
def test_pages_render_in_headless_chromium(run_dir, tmp_path, page):
    shot = tmp_path / "shot.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1200,900", (run_dir / "cards" / page).as_uri(),
                    tmp_path=tmp_path)
    assert shot.is_file(), proc.stderr
    width, height, pixels = read_png(shot)
    assert (width, height) == (1200, 900)
    inked = (pixels < 200).any(axis=2)  # text, bars, highlighted tokens: not a blank page
    assert inked.mean() > 0.01 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert (pixels[..., 2].astype(int) - pixels[..., 0] < -60).any(), "no orange token highlight on screen"


@pytest.mark.e2e
@needs_chromium
def test_injected_script_does_not_run(run_dir, tmp_path):
    dom = chromium("--dump-dom", (run_dir / "cards" / "layer0" / "neuron4.html").as_uri(), tmp_path=tmp_path).stdout
    assert "&lt;script&gt;document.body.setAttribute('data-pwned','1')&lt;/script&gt;" in dom  # shown as text
    assert "<body data-pwned" not in dom
    # control: the same check sees a script that does run
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body><p>{PWN}</p></body></html>")
    assert '<body data-pwned="1">' in chromium("--dump-dom", control.as_uri(), tmp_path=tmp_path).stdout
