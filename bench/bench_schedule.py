"""Warmup-stable-decay against cosine at the same budget, and what the tracked points' cooldown branches cost,
on a sweep file's shape (default: the seed ablation's reference condition), side by side in one run.

    python bench/bench_schedule.py [--config configs/seed-ablation.toml] [--seeds 0 1 2] [--steps N] [--out DIR]

Per seed it trains three runs of the same budget: cosine; wsd; wsd keeping the sweep's tracked points (each a
cooldown branched from the stable phase). Reported: each run's final val loss, wsd − cosine per seed with its mean,
the kept points' val losses against the plain wsd run's trunk at the same step (what annealing adds), and the
training time of wsd with branches over wsd without (the branches' cost). Runs go one at a time on one thread,
interleaved by seed, so that a noisy machine slows every row alike; compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from cratelab.config import load_sweep_config
from cratelab.sweep.design import tracked_steps
from cratelab.train import train


def metrics_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/seed-ablation.toml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=0, help="train.max_steps (default: the file's)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    base, sweep = load_sweep_config(args.config)
    train_cfg = replace(base.train, threads=1, **({"max_steps": args.steps} if args.steps else {}))
    base = replace(base, train=train_cfg)
    keep = list(tracked_steps(sweep.track or [0.5], train_cfg.max_steps))
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-schedule-"))
    variants = {"cosine": (replace(train_cfg, schedule="cosine"), []),
                "wsd": (replace(train_cfg, schedule="wsd"), []),
                "wsd+branches": (replace(train_cfg, schedule="wsd"), keep)}
    results: dict[str, dict[int, dict]] = {name: {} for name in variants}
    for seed in args.seeds:
        for name, (cfg, keep_steps) in variants.items():
            run_cfg = replace(base, train=replace(cfg, seed=seed))
            t0 = time.perf_counter()
            final = train(run_cfg, out / f"{name}-s{seed}", fresh=True, progress=False, keep_steps=keep_steps)
            rows = metrics_rows(out / f"{name}-s{seed}")
            results[name][seed] = {"val_loss": final["val_loss"], "wall_s": time.perf_counter() - t0,
                                   "branches": {r["step"]: r["val_loss"] for r in rows if "cooldown_start" in r},
                                   "trunk": {r["step"]: r["val_loss"] for r in rows if "cooldown_start" not in r}}
            print(f"seed {seed} {name:>13}: val loss {final['val_loss']:.4f} in {results[name][seed]['wall_s']:.1f} s",
                  flush=True)
    diffs = [results["wsd"][s]["val_loss"] - results["cosine"][s]["val_loss"] for s in args.seeds]
    cost = [results["wsd+branches"][s]["wall_s"] / results["wsd"][s]["wall_s"] for s in args.seeds]
    print(f"\n{args.config}: {train_cfg.max_steps} steps, cooldown {train_cfg.cooldown:g}, tracked steps {keep}")
    print(f"final val loss, wsd − cosine per seed: {', '.join(f'{d:+.4f}' for d in diffs)}; "
          f"mean {statistics.mean(diffs):+.4f}")
    for step in keep:
        annealed = [results["wsd+branches"][s]["branches"].get(step) for s in args.seeds]
        trunk = [results["wsd"][s]["trunk"].get(step) for s in args.seeds]
        if None not in annealed and None not in trunk:
            print(f"tracked step {step}: branch val loss {statistics.mean(annealed):.4f} against the un-annealed "
                  f"trunk's {statistics.mean(trunk):.4f} (mean over seeds)")
        elif None not in annealed:
            print(f"tracked step {step}: branch val loss {statistics.mean(annealed):.4f} (no trunk evaluation there)")
    print(f"wall time of wsd with branches / without: {', '.join(f'{c:.3f}' for c in cost)}; "
          f"median {statistics.median(cost):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "steps": train_cfg.max_steps, "keep": keep,
                                         "results": results, "wsd_minus_cosine": diffs, "branch_cost": cost},
                                        indent=1))


if __name__ == "__main__":
    main()
