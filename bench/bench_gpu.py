"""Training throughput of the paper's 1L, 3L and 12L (B) CRATE and GPT shapes on one GPU, in bf16
autocast with and without torch.compile: tokens/s and MFU (model FLOPs utilisation).

    python bench/bench_gpu.py --jsonl bench/gpu-results/bench.jsonl      # on a CUDA GPU
    python bench/bench_gpu.py --cpu-dry-run --jsonl /tmp/bench.jsonl      # the same code path, tiny, on a CPU

The shapes are those of configs/paper-{1l,3l,b}.toml (vocab 50304, context 1024); GPT is the ReLU
baseline of the same width and depth. One step is the model's forward, backward and fused AdamW step
(bench_train.make_step); the training loop's data loading, clipping and logging are not in it.
FLOPs are the analytic counts of cratelab.flops (matrix products only, x3 for training), so MFU is
the useful work done against a peak: against the card's datasheet bf16 dense peak (for an H200 SXM
989 TFLOP/s; --peak-tflops to change it), and against a large bf16 matmul measured in this run.

Each configuration's row is appended to --jsonl as soon as it is measured, so a run cut short by its
time budget keeps what it finished. Out of memory halves the batch and tries again.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from bench_train import make_step, matmul_time
from cratelab.config import ModelConfig, load_config
from cratelab.flops import training_flops_per_token

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"1l": "configs/paper-1l.toml", "3l": "configs/paper-3l.toml", "b": "configs/paper-b.toml"}
BATCH = {"1l": 64, "3l": 64, "b": 32}  # sequences of 1024 tokens per step; out of memory halves them
H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H200 SXM datasheet, bf16 tensor core, dense (no sparsity)
DRY_SHAPE = dict(n_embd=32, n_head=2, block_size=32, vocab_size=256)  # the presets' depth, tiny otherwise


def paper_shape(size: str, arch: str, dry_run: bool) -> ModelConfig:
    model = load_config(ROOT / SIZES[size]).model
    model = dataclasses.replace(model, arch=arch, **(DRY_SHAPE if dry_run else {}))
    model.validate()
    return model


def measured_peak(n: int, device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n x n matrix product, after warm-up."""
    for _ in range(3):
        matmul_time(n, device, dtype)
    return 2 * n**3 / matmul_time(n, device, dtype, repeats=10)


def measure(cfg: ModelConfig, batch: int, device: torch.device, amp_dtype, compile_backend, warmup: int,
            steps: int) -> dict:
    """Median step time over ``steps`` timed steps after ``warmup`` (the first one compiles)."""
    if compile_backend:
        torch._dynamo.reset()  # a fresh compile per model: no recompilation limits carried over
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = make_step(cfg, batch, device=device, amp_dtype=amp_dtype, compile_backend=compile_backend)
    first = step()
    for _ in range(warmup - 1):
        step()
    times = [step() for _ in range(steps)]
    seconds = statistics.median(times)
    row = dict(first_step_s=first, step_s=seconds, step_s_min=min(times), step_s_max=max(times),
               tokens_per_s=batch * cfg.block_size / seconds)
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1l,3l,b", help="comma-separated, of: " + ", ".join(SIZES))
    p.add_argument("--arches", default="crate,gpt")
    p.add_argument("--compile", default="off,on", help="'off', 'on' or both; all eager rows run first")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (the first compiles)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--batch", action="append", default=[], metavar="SIZE=N", help="sequences per step, e.g. b=16")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                   help="the card's bf16 dense peak for MFU (default: H200 SXM datasheet, 989)")
    p.add_argument("--jsonl", required=True, help="append one JSON line per measured configuration here")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="tiny shapes, fp32, on the CPU, compile with the 'eager' backend: checks the code path")
    args = p.parse_args()

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        p.error("no CUDA GPU here (use --cpu-dry-run to check the code path on a CPU)")
    device = torch.device("cpu" if dry else "cuda")
    amp_dtype = None if dry else torch.bfloat16  # the paper's training dtype; never bf16 on a CPU
    compile_backend = "eager" if dry else "inductor"
    batches = dict(BATCH, **({size: 2 for size in SIZES} if dry else {}))
    for text in args.batch:
        size, _, n = text.partition("=")
        if size not in SIZES or not n.isdigit() or int(n) < 1:
            p.error(f"--batch {text!r}: expected SIZE=N with SIZE one of {', '.join(SIZES)}")
        batches[size] = int(n)
    sizes, arches, modes = args.sizes.split(","), args.arches.split(","), args.compile.split(",")
    if not set(modes) <= {"off", "on"}:
        p.error(f"--compile {args.compile!r}: use 'off', 'on' or 'off,on'")
    for size in sizes:
        if size not in SIZES:
            p.error(f"--sizes: unknown size {size!r} (use {', '.join(SIZES)})")
    for arch in arches:
        if arch not in ("crate", "gpt"):
            p.error(f"--arches: unknown arch {arch!r} (use crate, gpt)")

    jsonl = Path(args.jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    matmul_n = 256 if dry else 8192
    peak = measured_peak(matmul_n, device, amp_dtype or torch.float32)
    header = dict(kind="machine", device=torch.cuda.get_device_name(device) if not dry else "cpu (dry run)",
                  torch=torch.__version__, cuda=torch.version.cuda,
                  dtype=str(amp_dtype or torch.float32).removeprefix("torch."),
                  datasheet_peak_tflops=args.peak_tflops, matmul_n=matmul_n, measured_matmul_tflops=peak / 1e12,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    with jsonl.open("a") as f:
        f.write(json.dumps(header) + "\n")
    print(f"{header['device']}, torch {header['torch']}: {header['dtype']} matmul measured {peak / 1e12:.3g} TFLOP/s; "
          f"MFU against the datasheet's {args.peak_tflops:.0f} TFLOP/s and against the measured peak", flush=True)

    for compiled in [mode == "on" for mode in modes]:
        for size in sizes:
            for arch in arches:
                cfg = paper_shape(size, arch, dry)
                batch, row = batches[size], None
                name = f"{arch}-{size}{'-compiled' if compiled else ''}"
                while row is None:
                    try:
                        row = measure(cfg, batch, device, amp_dtype, compile_backend if compiled else None,
                                      args.warmup, args.steps)
                    except torch.cuda.OutOfMemoryError:
                        pass
                    if row is None:  # out of memory; the failed step's tensors are free once the exception is
                        gc.collect()
                        torch.cuda.empty_cache()
                        if batch == 1:
                            row = dict(error="out of memory at batch 1")
                        else:
                            print(f"{name}: out of memory at batch {batch}; trying {batch // 2}", flush=True)
                            batch //= 2
                if "tokens_per_s" in row:
                    flops = training_flops_per_token(cfg) * row["tokens_per_s"]
                    row |= dict(tflops=flops / 1e12, mfu=flops / (args.peak_tflops * 1e12),
                                mfu_measured_peak=flops / peak)
                row = dict(kind="row", model=name, arch=arch, size=size, compile=compiled, batch=batch,
                           context=cfg.block_size, **row)
                with jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                if "error" in row:
                    print(f"{name}: {row['error']}", flush=True)
                else:
                    print(f"{name:<18} batch {batch:>3} | {row['tokens_per_s']:>12,.0f} tokens/s | "
                          f"{row['tflops']:7.1f} TFLOP/s | MFU {row['mfu']:6.1%} "
                          f"(of measured {row['mfu_measured_peak']:6.1%})"
                          f" | first step {row['first_step_s']:.1f} s", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
