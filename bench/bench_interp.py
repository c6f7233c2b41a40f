"""The interpret pipeline's costs, side by side in one run:

1. record collection vs a plain forward pass (full logits, as in evaluation) over the same held-out
   windows, for a few CRATE shapes; also the pass cut after the last interpreted layer (what collection
   runs: it skips the LM head), so that the cost of building the records alone shows. The passes are
   interleaved round by round and medians reported, so a noisy machine slows all alike (compare
   ratios, not seconds);
2. peak memory (RSS) of streaming 1M and 4M tokens of 3072 neurons into a RecordBuilder: a synthetic
   activation stream (a model that wide is too slow on a CPU), one fresh subprocess per size;
3. offline scoring (token-pattern) of 1,536 neurons under all three protocols, records built on
   real text (the fixture corpus' validation split), with and without the run folder's fsynced
   appends of scores.jsonl.

    python bench/bench_interp.py [--rounds 3] [--mem-tokens 1048576,4194304] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cratelab.config import DataConfig, InterpConfig, ModelConfig
from cratelab.interp import RecordBuilder, get_protocol, make_backend
from cratelab.interp.collect import _Stop, collect_records, window_offsets
from cratelab.interp.run import _scoring_stage, score_protocols
from cratelab.models import build_model, neuron_hook_name

SHAPES = {  # name: (layers, d, heads, vocab, context, batch, batches streamed)
    "tiny (configs/tiny.toml)": (2, 64, 4, 512, 64, 16, 64),
    "4L d256 h1024": (4, 256, 4, 8192, 256, 16, 24),
    "2L d768 h3072 (paper S width)": (2, 768, 12, 8192, 256, 16, 8),
}


def token_stream(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Random token ids with an end-of-text token (the last id) about every 300 tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab - 1, n)
    ids[rng.random(n) < 1 / 300] = vocab - 1
    return ids.astype(np.int64)


def bench_collection(rounds: int) -> list[dict]:
    rows = []
    for name, (layers, d, heads, vocab, context, batch, batches) in SHAPES.items():
        torch.manual_seed(0)
        model = build_model(ModelConfig(n_layer=layers, n_head=heads, n_embd=d, vocab_size=vocab,
                                        block_size=context)).eval()
        n_tokens = batches * batch * context  # the first batches cost most (every block enters the top records)
        tokens = token_stream(n_tokens, vocab)
        offsets = window_offsets(len(tokens), context, n_tokens)
        windows = torch.from_numpy(tokens[offsets[:, None] + np.arange(context)])
        vocab_strings = [str(i) for i in range(vocab)]

        @torch.no_grad()
        def forward():
            for i in range(0, len(windows), batch):
                model(windows[i:i + batch])

        def stop(_value, hook):
            raise _Stop

        @torch.no_grad()
        def trunk():  # the forward pass as collection runs it: up to the last interpreted layer, no records
            with model.hooks([(neuron_hook_name(model.config, layers - 1), stop)]):
                for i in range(0, len(windows), batch):
                    try:
                        model(windows[i:i + batch])
                    except _Stop:
                        pass

        def collect():
            collect_records(model, tokens, vocab_strings, layers=range(layers), n_tokens=n_tokens,
                            eot_id=vocab - 1, batch_size=batch)

        forward()  # warm-up
        times = {"forward": [], "trunk": [], "collect": []}
        for _ in range(rounds):
            for kind, fn in (("forward", forward), ("trunk", trunk), ("collect", collect)):
                t0 = time.perf_counter()
                fn()
                times[kind].append(time.perf_counter() - t0)
        f, t, c = (statistics.median(times[k]) for k in ("forward", "trunk", "collect"))
        rows.append({"shape": name, "neurons": 4 * d, "layers": layers, "tokens": n_tokens, "forward_s": f,
                     "trunk_s": t, "collect_s": c, "overhead": c / f - 1, "records_share": (c - 2 * t) / f})
        print(f"  {name:<32} {n_tokens:>7,} tok  forward {f:6.2f}s  (no LM head {t:6.2f}s)  collect {c:6.2f}s  "
              f"overhead {100 * (c / f - 1):+6.1f}%  (record building alone, besides its two trunk passes, "
              f"{100 * (c - 2 * t) / f:+5.1f}%)", flush=True)
    return rows


MEMORY_CHILD = """
import json, resource, sys, time
import numpy as np, torch
from cratelab.interp import RecordBuilder
n_tokens, H, B, T = int(sys.argv[1]), 3072, 16, 1024
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
base = torch.randn(B, T, H).sub_(1.0).relu_()  # ~16% non-zero, like a sparse code; in place: no temporaries
builder = RecordBuilder(H, [str(i) for i in range(50257)], eot_id=50256, seed=0)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
current = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
before, t0 = current(), time.perf_counter()
def batches():  # the same batches on every call: the builder reads the stream twice
    rng = np.random.default_rng(0)
    for _ in range(n_tokens // (B * T)):
        yield rng.integers(0, 50257, (B, T)), torch.roll(base, int(rng.integers(1, T)), dims=1)  # same distribution
for step in (builder.add, builder.count):
    for ids, acts in batches():
        step(ids, acts)
records = builder.finish()
print(json.dumps({"tokens": records.n_tokens, "rss_before": before, "peak_rss": peak(),
                  "seconds": time.perf_counter() - t0}))
"""


def bench_memory(sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(n), str(torch.get_num_threads())],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        growth = (row["peak_rss"] - row["rss_before"]) / 2**20
        print(f"  {row['tokens']:>9,} tokens x 3072 neurons: peak RSS {row['peak_rss'] / 2**20:7.0f} MiB "
              f"(growth while streaming {growth:6.0f} MiB) in {row['seconds']:.0f}s", flush=True)
    return rows


def scoring_records(n_neurons: int = 1536):
    from cratelab.data.shards import prepare_dataset

    dataset = prepare_dataset(DataConfig(corpus="fixture", bpe_vocab_size=512), progress=False)
    tok = dataset.tokenizer
    T = 1024
    ids = np.asarray(dataset.val[:len(dataset.val) // T * T], dtype=np.int64).reshape(-1, T)
    rng = np.random.default_rng(0)
    # each neuron prefers a few tokens (about 2% of the vocabulary) plus sparse noise
    preference = torch.from_numpy(np.maximum(rng.standard_normal((tok.vocab_size, n_neurons)) - 2.0, 0.0))
    preference = preference.float()
    builder = RecordBuilder(n_neurons, [tok.token_str(i) for i in range(tok.vocab_size)], eot_id=tok.eot_id)
    for step in (builder.add, builder.count):  # the two passes see the same batches
        noise_rng = torch.Generator().manual_seed(0)
        for r in range(0, len(ids), 4):
            batch = torch.from_numpy(ids[r:r + 4])
            noise = torch.relu(torch.randn(*batch.shape, n_neurons, generator=noise_rng) - 2.0) * 0.5
            step(batch.numpy(), preference[batch] + noise)
    return builder.finish()


def bench_scoring() -> dict:
    records = scoring_records()
    explainer, simulator = make_backend("token-pattern")
    names = InterpConfig().protocol_list()
    per_protocol = {}
    t_all = time.perf_counter()
    neuron_records = [records.neuron(h) for h in range(records.n_neurons)]
    t_records = time.perf_counter() - t_all
    for name in names:
        t0 = time.perf_counter()
        for nr in neuron_records:
            score_protocols(nr, [get_protocol(name)], explainer, simulator)
        per_protocol[name] = time.perf_counter() - t0
    pure = time.perf_counter() - t_all
    with tempfile.TemporaryDirectory() as tmp:  # the run folder's stage: NeuronRecords, scoring, fsynced appends
        icfg = InterpConfig(protocols=",".join(names))
        t0 = time.perf_counter()
        _scoring_stage(Path(tmp), {0: records}, {0: list(range(records.n_neurons))},
                       [get_protocol(n) for n in names], icfg, progress=False)
        stage = time.perf_counter() - t0
    row = {"neurons": records.n_neurons, "tokens": records.n_tokens, "neuron_records_s": t_records,
           "per_protocol_s": per_protocol, "total_s": pure, "stage_with_fsync_s": stage}
    print(f"  {records.n_neurons} neurons x {len(names)} protocols on {records.n_tokens:,} tokens of text: "
          f"{pure:.1f}s in all ({records.n_neurons * len(names) / pure:.0f} scores/s); NeuronRecords {t_records:.1f}s; "
          + ", ".join(f"{k} {v:.1f}s" for k, v in per_protocol.items())
          + f"; as the run-folder stage with fsynced appends: {stage:.1f}s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mem-tokens", default="1048576,4194304")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 gives steadier numbers on a busy machine")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("1. record collection (all layers) vs a plain forward pass over the same windows")
    collection = bench_collection(args.rounds)
    memory = []
    if not args.skip_memory:
        print("2. peak memory of a streaming RecordBuilder, 3072 neurons, synthetic activations")
        memory = bench_memory([int(n) for n in args.mem_tokens.split(",")])
    print("3. offline scoring, token-pattern")
    scoring = bench_scoring()
    print("\nsummary")
    for r in collection:
        print(f"  collection vs a forward pass, {r['shape']}: {100 * r['overhead']:+.1f}% "
              f"(record building alone: {100 * r['records_share']:+.1f}%)")
    if len(memory) >= 2:
        a, b = memory[0], memory[-1]
        print(f"  peak RSS {b['tokens'] / a['tokens']:.0f}x the tokens: {b['peak_rss'] / a['peak_rss']:.2f}x "
              f"({a['peak_rss'] / 2**20:.0f} -> {b['peak_rss'] / 2**20:.0f} MiB)")
    print(f"  scoring {scoring['neurons']} neurons x 3 protocols: {scoring['total_s']:.1f}s "
          f"({scoring['stage_with_fsync_s']:.1f}s as the resumable stage)")
    if args.json:
        Path(args.json).write_text(json.dumps({"collection": collection, "memory": memory, "scoring": scoring,
                                               "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
