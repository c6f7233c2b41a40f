"""Static HTML neuron cards of an interpret run folder: `cards/index.html` (per layer, the scored neurons
sorted by score) and `cards/layer{l}/neuron{h}.html` (one page per scored neuron).

A card shows the neuron's explanation and score under each protocol, its top, quantile and random
records with every token's background proportional to activation / max, the real and the simulated
activations on each protocol's scoring records, and an activation histogram (inline SVG).
Plain HTML and CSS: no script, no network resource. Every piece of corpus or model text (tokens,
explanations, reasons, paths) goes through `esc`, so a token such as `<script>` shows as text.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from ..io import iter_jsonl, read_jsonl, write_text
from ..layout import CARDS, CARDS_INDEX, RECORDS, SCORES, SIMULATIONS, SUMMARY_JSON, card_page, layer_folder
from .activations import ActivationRecord, LayerRecords, NeuronRecord
from .files import decode_simulation
from .protocols import get_protocol
from .score import DEGENERATE, flag_degenerate

SHOWN = 10  # top records shown open; MORE_TOP more sit in a closed <details>
MORE_TOP = 10
SHOWN_RANDOM = 5  # random records shown

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;max-width:1120px;
 margin:20px auto;padding:0 18px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;padding-bottom:3px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 4px}a{color:#0645ad}.meta{color:#555;margin:2px 0}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;
 vertical-align:top}th{background:#f4f4f6;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.bad{color:#a40000}
.rec{font:12.5px/1.85 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
 word-break:break-word;margin:2px 0;padding:1px 6px;border-left:3px solid #e4e4e4}
.rec span{background:rgba(255,115,0,var(--a));border-radius:2px}
.rec.sim span{background:rgba(30,105,255,var(--a))}
LEVEL_CLASSES
.rec .lbl{background:none;display:inline-block;width:46px;white-space:nowrap;color:#999;font:11px system-ui,sans-serif}
.pair{margin:7px 0}.grid>.pair,.grid>.rec{display:inline-block;vertical-align:top;margin:3px 16px 3px 0}
.note{color:#777;font-size:12.5px}
details>summary{cursor:pointer;color:#0645ad;margin:4px 0}
.legend span{display:inline-block;width:11px;height:11px;margin:0 4px 0 12px;vertical-align:-1px}
""".strip()
LEVELS = 20  # background opacity steps of a token
CSS = CSS.replace("LEVEL_CLASSES", "".join(f".a{k}{{--a:{k / LEVELS:.2f}}}" for k in range(LEVELS + 1)))


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _shown(token: str) -> str:
    """A token as it appears in a record: whitespace that would break the line made visible."""
    return esc(token.replace("\r", "␍").replace("\n", "↵").replace("\t", "→"))


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def record_html(tokens: Sequence[str], values: np.ndarray, scale: float, *, label: str = "", sim: bool = False) -> str:
    """One record: each token's background opacity is value / scale, clipped to [0, 1], in LEVELS steps
    (classes keep pages small); hovering shows the value. Tokens at zero are plain text."""
    values = np.asarray(values, dtype=np.float64)
    level = (np.rint(np.clip(values / scale, 0.0, 1.0) * LEVELS).astype(int) if scale > 0
             else np.zeros(len(values), dtype=int))
    parts = [f'<span class="lbl">{esc(label)}</span>'] if label else []
    for token, value, k in zip(tokens, values, level):
        if value == 0:
            parts.append(_shown(token))
        else:
            parts.append(f'<span class="a{k}" title="{value:.3g}">{_shown(token)}</span>')
    return f'<div class="rec{" sim" if sim else ""}">{"".join(parts)}</div>'


def _records_block(records: Sequence[ActivationRecord], scale: float, shown: int, more: int = 0,
                   peak: bool = True) -> str:
    """Records (labelled with their peak activation); the first `shown` open, `more` in a <details>."""
    def one(r: ActivationRecord) -> str:
        label = f"{r.activations.max(initial=0.0):.3g}" if peak else ""
        return record_html(r.tokens, r.activations, scale, label=label)

    out = [one(r) for r in records[:shown]]
    rest = records[shown:shown + more]
    if rest:
        out.append(f"<details><summary>{len(rest)} more</summary>" + "".join(one(r) for r in rest) + "</details>")
    return "\n".join(out) if out else '<p class="note">none</p>'


def histogram_svg(sample: np.ndarray, top: np.ndarray, hi: float, bins: int = 40) -> str:
    """Bars of the activations of a uniform sample of tokens (grey-blue) and of the top records'
    peak tokens (orange), log-scaled counts, over [min(0, lowest), hi]."""
    sample, top = np.asarray(sample, dtype=np.float64), np.asarray(top, dtype=np.float64)
    lo = min(0.0, float(sample.min(initial=0.0)), float(top.min(initial=0.0)))
    hi = max(hi, float(sample.max(initial=0.0)), lo + 1e-9)
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(v, edges)[0] for v in (sample, top)]
    top_count = max(1, *(int(c.max(initial=0)) for c in counts))
    W, H, left, plot_h = 560, 178, 46, 128
    bar_w = (W - left - 10) / bins
    peak = np.log10(1 + top_count)
    shapes = []
    for c, colour in zip(counts, ("rgba(70,110,170,.75)", "rgba(255,115,0,.8)")):
        for i, n in enumerate(c):
            if n:
                h = max(1.0, plot_h * np.log10(1 + n) / peak)
                x = left + i * bar_w
                shapes.append(f'<rect x="{x:.1f}" y="{10 + plot_h - h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                              f'height="{h:.1f}" fill="{colour}"><title>{n} tokens in [{edges[i]:.3g}, '
                              f'{edges[i + 1]:.3g})</title></rect>')
    axis_y = 10 + plot_h
    anchor = {0: "start", 1: "end"}
    ticks = "".join(f'<text x="{left + f * (W - left - 10):.1f}" y="{axis_y + 15}" '
                    f'text-anchor="{anchor.get(f, "middle")}">{lo + f * (hi - lo):.3g}</text>'
                    for f in (0, 0.25, 0.5, 0.75, 1))
    zero = float((sample == 0).mean()) if sample.size else 0.0
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'font-family="system-ui,sans-serif" font-size="11" fill="#444" role="img" '
            f'aria-label="activation histogram">'
            f'<line x1="{left}" y1="{axis_y}" x2="{W - 10}" y2="{axis_y}" stroke="#999"/>'
            f'<line x1="{left}" y1="10" x2="{left}" y2="{axis_y}" stroke="#999"/>'
            f'<text x="{left - 5}" y="16" text-anchor="end">{top_count}</text>'
            f'<text x="{left - 5}" y="{axis_y}" text-anchor="end">0</text>'
            f'<text x="12" y="{10 + plot_h / 2}" transform="rotate(-90 12 {10 + plot_h / 2})" text-anchor="middle">'
            f"tokens (log)</text>{''.join(shapes)}{ticks}"
            f'<text x="{(W + left) / 2}" y="{H - 2}" text-anchor="middle">activation '
            f"({sample.size} sampled tokens, {100 * zero:.0f}% zero)</text></svg>")


def neuron_card(record: NeuronRecord, rows: dict[str, dict[str, Any]], sims: dict[str, list[np.ndarray]],
                protocols: Sequence[str], *, title: str = "", index_href: str = f"../{CARDS_INDEX}") -> str:
    """The HTML page of one neuron: rows and sims map protocol name -> its scores.jsonl row / simulation."""
    scale = record.max_activation
    name = f"Layer {record.layer} · neuron {record.neuron}"
    out = [f'<p class="meta"><a href="{esc(index_href)}">← all neurons</a>{" · " + esc(title) if title else ""}</p>',
           f"<h1>{esc(name)}</h1>",
           f'<p class="meta">firing rate {100 * record.firing_rate:.2f}% · max activation {record.max_activation:.4g} '
           f"· mean {record.mean:.4g} · token background ∝ activation / max</p>",
           "<h2>Explanations and scores</h2>",
           "<table><tr><th>protocol</th><th>score</th><th>explanation</th></tr>"]
    for p in protocols:
        row = rows.get(p)
        if row is None:
            out.append(f'<tr><td>{esc(p)}</td><td class="num">–</td><td class="note">not scored</td></tr>')
        elif row["score"] is None:
            out.append(f'<tr><td>{esc(p)}</td><td class="num bad">n/a</td><td>{explanation_html(row)}'
                       f'<br><span class="bad">unscorable: {esc(row["reason"])}</span></td></tr>')
        else:
            out.append(f'<tr><td>{esc(p)}</td><td class="num">{row["score"]:.3f}</td>'
                       f"<td>{explanation_html(row)}</td></tr>")
    out.append("</table>")

    sample = np.concatenate([r.activations for r in record.random]) if record.random else np.zeros(0)
    top_peaks = np.array([r.activations.max(initial=0.0) for r in record.top])
    out += ["<h2>Activation histogram</h2>", histogram_svg(sample, top_peaks, scale),
            '<p class="legend note"><span style="background:rgba(70,110,170,.75)"></span>tokens of the random '
            'records (a uniform sample)<span style="background:rgba(255,115,0,.8)"></span>peak token of each '
            "top record</p>"]

    out += ["<h2>Top-activating records</h2>", _records_block(record.top, scale, SHOWN, MORE_TOP)]
    out.append('<h2 id="quantiles">Quantile records</h2><p class="note">equal-mass bins of the activation over '
               "all tokens, lowest first (the top twelfth is the top records')</p>")
    edges = record.quantile_boundaries
    for b, records in enumerate(record.quantiles):
        out.append(f"<h3>bin {b + 1}: activation in [{edges[b]:.3g}, {edges[b + 1]:.3g}]</h3>")
        out.append(f'<div class="grid">{_records_block(records, scale, len(records), peak=False)}</div>')
    out += ["<h2>Random records</h2>", _records_block(record.random, scale, SHOWN_RANDOM)]

    for p in protocols:
        sim = sims.get(p)
        if sim is None:
            continue
        protocol = get_protocol(p)
        scoring = protocol.scoring_records(record)
        sim_scale = max((float(np.max(s, initial=0.0)) for s in sim), default=0.0)
        row = rows[p]
        score = "unscorable" if row["score"] is None else f"score {row['score']:.3f}"
        out.append(f'<h2 id="scoring-{esc(p)}">Scoring records: {esc(p)} ({esc(score)})</h2>')
        shown = len(scoring) if protocol.short else min(len(scoring), SHOWN)  # short records: all
        note = f" (the first {shown} of {len(scoring)})" if shown < len(scoring) else ""
        out.append(f'<p class="note">real activations (orange) and the simulation from the explanation alone '
                   f"(blue, scaled to its own max){note}</p>")
        pairs = ['<div class="pair">' + record_html(r.tokens, r.activations, scale, label="real")
                 + record_html(r.tokens, np.asarray(s), sim_scale, label="sim", sim=True) + "</div>"
                 for r, s in zip(scoring[:shown], sim[:shown])]
        out.append(f'<div class="grid">{"".join(pairs)}</div>' if protocol.short else "\n".join(pairs))
    return _page(f"{name} — {title}" if title else name, "\n".join(out))


def explanation_html(row: dict[str, Any]) -> str:
    """A row's explanation, marked when it is degenerate (score.DEGENERATE: it says nothing about the neuron)."""
    text = f'<span class="code">{esc(row["explanation"])}</span>'
    if kind := row.get("degenerate"):
        text += (f' <span class="bad" title="{esc(DEGENERATE.get(kind, kind))}">⚠ degenerate explanation: '
                 f"{esc(kind)}</span>")
    return text


def _sort_key(by_protocol: dict[str, dict[str, Any]], protocols: Sequence[str]) -> tuple:
    """Best first by the first protocol's score; unscorable neurons last."""
    score = by_protocol.get(protocols[0], {}).get("score")
    return (score is None, -(score or 0.0))


def index_page(summary: dict[str, Any], neurons: dict[int, list[tuple[int, dict[str, dict[str, Any]]]]],
               carded: set[tuple[int, int]]) -> str:
    protocols = summary["protocols"]
    out = ["<h1>Neuron cards</h1>",
           f'<p class="meta">{esc(summary["checkpoint"])} · step {esc(summary["step"])} · method '
           f'{esc(summary["method"])} · {summary["n_tokens"]:,} held-out tokens · {summary["neurons_per_layer"]} of '
           f'{summary["n_neurons"]} neurons per layer</p>']
    conf = round(100 * summary["settings"]["confidence"])
    out.append(f'<h2>Layer means</h2><p class="note">mean score over the scored neurons [{conf}% bootstrap CI]; '
               "unscorable neurons are counted, not averaged in</p><table><tr><th>layer</th>"
               + "".join(f"<th>{esc(p)}</th>" for p in protocols) + "</tr>")
    cells = {(s["layer"], s["protocol"]): s for s in summary["layers"]}
    for layer in sorted({s["layer"] for s in summary["layers"]}):
        row = []
        for p in protocols:
            s = cells.get((layer, p))
            text = "–" if s is None else (f"{_num(s['mean'])} [{_num(s['ci_low'])}, {_num(s['ci_high'])}]"
                                          if s["mean"] is not None else "n/a")
            if s is not None and s["n_unscorable"]:
                text += f' <span class="bad">· {s["n_unscorable"]} unscorable</span>'
            row.append(f'<td class="num">{text}</td>')
        out.append(f'<tr><td><a href="#layer{layer}">{layer}</a></td>{"".join(row)}</tr>')
    out.append("<tr><th>model</th>" + "".join(f'<th class="num">{_num(summary["model"][p]["mean"])}</th>'
                                               for p in protocols) + "</tr></table>")
    head = "".join(f"<th>{esc(p)}</th>" for p in protocols)
    for layer, items in sorted(neurons.items()):
        out.append(f'<h2 id="layer{layer}">Layer {layer}</h2><p class="note">sorted by {esc(protocols[0])} score</p>'
                   f"<table><tr><th>neuron</th>{head}<th>firing rate</th><th>max act.</th><th>explanation "
                   f"({esc(protocols[0])})</th></tr>")
        for h, by_protocol in items:
            link = (f'<a href="layer{layer}/{card_page(h)}">{h}</a>' if (layer, h) in carded else str(h))
            cells = "".join(f'<td class="num">{_num(by_protocol[p]["score"]) if p in by_protocol else "–"}</td>'
                            for p in protocols)
            any_row = next(iter(by_protocol.values()))
            first = by_protocol.get(protocols[0], any_row)
            out.append(f"<tr><td>{link}</td>{cells}<td class=\"num\">{100 * any_row['firing_rate']:.2f}%</td>"
                       f"<td class=\"num\">{any_row['max_activation']:.3g}</td>"
                       f"<td>{explanation_html(first)}</td></tr>")
        out.append("</table>")
    return _page("Neuron cards", "\n".join(out))


def write_cards(run_dir: str | Path, *, records: dict[int, LayerRecords] | None = None,
                rows: Sequence[dict[str, Any]] | None = None, summary: dict[str, Any] | None = None,
                max_cards: int = 0, progress: bool = False) -> Path:
    """Write run_dir/cards/ from the run folder (or the given records, rows and summary); returns index.html.

    max_cards: cards per layer (the best-scoring neurons); 0 = one per scored neuron. The index is
    written last, so its presence marks a complete set of cards.
    """
    run_dir = Path(run_dir)
    rows = flag_degenerate(read_jsonl(run_dir / SCORES)) if rows is None else rows
    summary = json.loads((run_dir / SUMMARY_JSON).read_text(encoding="utf-8")) if summary is None else summary
    protocols = summary["protocols"]
    grouped: dict[int, dict[int, dict[str, dict[str, Any]]]] = defaultdict(dict)
    for row in rows:
        grouped[row["layer"]].setdefault(row["neuron"], {})[row["protocol"]] = row
    neurons = {layer: sorted(by_neuron.items(), key=lambda item: (_sort_key(item[1], protocols), item[0]))
               for layer, by_neuron in grouped.items()}
    carded = {(layer, h) for layer, items in neurons.items()
              for h, _ in (items[:max_cards] if max_cards else items)}
    cards = run_dir / CARDS
    title = f"{summary['checkpoint']} (step {summary['step']})"
    with tqdm(total=len(carded), unit="card", desc="cards", disable=not progress) as bar:
        for layer in sorted(neurons):
            layer_records = (records or {}).get(layer) or LayerRecords.load(layer_folder(run_dir / RECORDS, layer))
            sims = {(s["neuron"], s["protocol"]): s for s in iter_jsonl(run_dir / SIMULATIONS)  # the last one wins
                    if s.get("layer") == layer and (layer, s.get("neuron")) in carded}
            layer_folder(cards, layer).mkdir(parents=True, exist_ok=True)
            for h, by_protocol in neurons[layer]:
                if (layer, h) not in carded:
                    continue
                page = neuron_card(layer_records.neuron(h), by_protocol,
                                   {p: decode_simulation(sims[(h, p)]) for p in protocols if (h, p) in sims},
                                   protocols, title=title)
                (layer_folder(cards, layer) / card_page(h)).write_text(page, encoding="utf-8")
                bar.update(1)
    index = cards / CARDS_INDEX
    write_text(index, index_page(summary, neurons, carded))
    return index


__all__ = ["esc", "explanation_html", "histogram_svg", "index_page", "neuron_card", "record_html", "write_cards"]
