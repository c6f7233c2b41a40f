"""What `runtime.keep_freed_memory` (glibc's mmap threshold raised) buys a CPU training step, at the seed
ablation's width (with a 4096-token vocabulary) and thread count, measured side by side.

    python bench/bench_allocator.py [--rounds 4 --steps 12 --threads 1]

The setting is process-wide and cannot be undone, so each round starts two fresh processes, one with it
and one without (in alternating order), each timing the median of its steps after a warm-up; the ratio of
the medians over rounds is the result. Both processes train the same seeded model on the same batch, so
their losses must agree exactly (the setting changes where memory lives, not what is computed).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# the seed ablation's width with a 4096-token vocabulary: its logits and their gradient are 32 MiB blocks
SHAPE = dict(n_layer=2, n_embd=128, n_head=4, vocab_size=4096, block_size=128)


def child(arch: str, steps: int, threads: int, keep: bool) -> None:
    import torch

    from cratelab.config import ModelConfig
    from cratelab.runtime import keep_freed_memory

    sys.path.insert(0, str(BENCH))
    from bench_train import make_step

    took_effect = keep_freed_memory() if keep else False
    torch.set_num_threads(threads)
    step = make_step(ModelConfig(arch=arch, **SHAPE), batch=16)
    times = [step() for _ in range(steps + 2)][2:]  # two warm-up steps
    torch.manual_seed(0)
    model_loss = _final_loss(arch)
    print(json.dumps(dict(step_s=statistics.median(times), took_effect=took_effect, loss=model_loss,
                          minor_faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt)))


def _final_loss(arch: str) -> float:
    """The loss after three seeded steps: equal with and without the setting."""
    import torch

    from cratelab.config import ModelConfig
    from cratelab.models import build_model

    cfg = ModelConfig(arch=arch, **SHAPE)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (16, cfg.block_size))
    for _ in range(3):
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.item()


def measure(arch: str, keep: bool, steps: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", arch, "--keep", str(int(keep)), "--steps", str(steps),
                          "--threads", str(threads)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--keep", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.steps, args.threads, bool(args.keep))
    rows = []
    for arch in ("crate", "gpt"):
        runs = {True: [], False: []}
        for round_ in range(args.rounds):
            for keep in ((True, False) if round_ % 2 == 0 else (False, True)):
                runs[keep].append(measure(arch, keep, args.steps, args.threads))
        with_, without = (statistics.median(r["step_s"] for r in runs[k]) for k in (True, False))
        losses = {r["loss"] for r in runs[True] + runs[False]}
        rows.append(dict(model=arch, step_s_kept=with_, step_s_default=without, speedup=without / with_,
                         took_effect=all(r["took_effect"] for r in runs[True]), losses_equal=len(losses) == 1,
                         minor_faults_kept=statistics.median(r["minor_faults"] for r in runs[True]),
                         minor_faults_default=statistics.median(r["minor_faults"] for r in runs[False])))
    print(f"shape {SHAPE}, batch 16, {args.threads} thread(s), {args.rounds} rounds of {args.steps} steps")
    print(f"{'model':<7}{'default s':>11}{'kept s':>9}{'speedup':>9}{'faults default':>16}{'faults kept':>13}  losses equal")
    for r in rows:
        print(f"{r['model']:<7}{r['step_s_default']:>11.3f}{r['step_s_kept']:>9.3f}{r['speedup']:>9.2f}"
              f"{r['minor_faults_default']:>16,.0f}{r['minor_faults_kept']:>13,.0f}  {r['losses_equal']}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(shape=SHAPE, threads=args.threads, rows=rows), indent=2))


if __name__ == "__main__":
    main()
