"""Training-step throughput and achieved FLOP/s of CRATE (shared and separate Q/K/V) and the GPT
baseline at one shape, side by side in one process, against this machine's fp32 matmul peak
measured in the same run. Also CRATE with the ISTA block written in plain autograd, to show what the
hand-written ISTA function buys.

    python bench/bench_train.py [--layers 4 --d 256 --heads 4 --vocab 8192 --context 256 --batch 16]

Steps of the models and matmul-peak samples are interleaved round by round and medians reported, so
that a noisy machine slows every row alike; compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

from cratelab.config import ModelConfig
from cratelab.flops import training_flops_per_token
from cratelab.models import build_model
from cratelab.models.crate import ISTA


def plain_autograd_ista(self: ISTA, x: torch.Tensor) -> torch.Tensor:
    """The ISTA block as a direct transcription of the equations (what cratelab used before)."""
    eta, threshold = self.step_size, self.step_size * self.lambd
    Wx = x @ self.weight.t()
    code = torch.relu(eta * Wx - threshold)
    for _ in range(self.steps - 1):
        code = torch.relu(code + (eta * (Wx - (code @ self.weight) @ self.weight.t()) - threshold))
    return self.hook_post(code) @ self.weight


class PlainISTA(ISTA):
    forward = plain_autograd_ista


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that wall-clock times measure it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_time(n: int = 2048, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                repeats: int = 1) -> float:
    """Seconds per n x n x n matrix product: the mean of ``repeats`` products timed together."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return (time.perf_counter() - t0) / repeats


def make_step(cfg: ModelConfig, batch: int, plain_ista: bool = False, device: str | torch.device = "cpu",
              amp_dtype: torch.dtype | None = None, compile_backend: str | None = None):
    """A function that runs one training step (forward, backward, AdamW) on a fixed random batch and
    returns its seconds. On CUDA, AdamW is fused as in train.py; ``amp_dtype`` autocasts the forward
    pass; ``compile_backend`` ("inductor" as ``train.compile``, "eager" to test the tracing alone)
    wraps the model in torch.compile."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if plain_ista:
        for block in model.blocks:
            block.ista.__class__ = PlainISTA
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                  fused=True if device.type == "cuda" else None)
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), device=device)

    def step() -> float:
        synchronize(device)
        t0 = time.perf_counter()
        with autocast:
            _, loss = forward(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - t0

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="also CRATE and GPT under torch.compile (inductor), as "
                                                           "train.compile runs them")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(n_layer=args.layers, n_embd=args.d, n_head=args.heads, vocab_size=args.vocab, block_size=args.context)
    variants = {  # name: (config, plain-autograd ISTA, torch.compile backend)
        "crate-shared": (ModelConfig(arch="crate", qkv="shared", **shape), False, None),
        "crate-separate": (ModelConfig(arch="crate", qkv="separate", **shape), False, None),
        "gpt-relu": (ModelConfig(arch="gpt", **shape), False, None),
        "crate-shared-plain-ista": (ModelConfig(arch="crate", qkv="shared", **shape), True, None),
    }
    if args.compile:
        variants |= {"crate-shared-compiled": (ModelConfig(arch="crate", qkv="shared", **shape), False, "inductor"),
                     "gpt-relu-compiled": (ModelConfig(arch="gpt", **shape), False, "inductor")}
    steps = {name: make_step(cfg, args.batch, plain, compile_backend=backend)
             for name, (cfg, plain, backend) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    peak_times = []
    for round_ in range(args.rounds + 1):  # round 0 warms up
        peak_times.append(min(matmul_time() for _ in range(3)))
        for name, step in steps.items():
            seconds = step()
            if round_:
                times[name].append(seconds)
    peak = 2 * 2048**3 / statistics.median(peak_times[1:])
    tokens = args.batch * args.context
    rows = []
    for name, (cfg, _, _) in variants.items():
        seconds = statistics.median(times[name])
        flops = training_flops_per_token(cfg) * tokens / seconds
        rows.append(dict(model=name, step_s=seconds, tokens_per_s=tokens / seconds, gflops=flops / 1e9,
                         frac_of_peak=flops / peak))
    gpt = next(r["gflops"] for r in rows if r["model"] == "gpt-relu")
    print(f"fp32 matmul peak (2048^2, median of this run): {peak / 1e9:.1f} GFLOP/s; threads {torch.get_num_threads()}; "
          f"shape {shape}, batch {args.batch}, {args.rounds} rounds")
    print(f"{'model':<26}{'step s':>8}{'tokens/s':>10}{'GFLOP/s':>9}{'of peak':>9}{'vs GPT':>8}")
    for r in rows:
        r["vs_gpt"] = r["gflops"] / gpt
        print(f"{r['model']:<26}{r['step_s']:>8.3f}{r['tokens_per_s']:>10.0f}{r['gflops']:>9.1f}"
              f"{r['frac_of_peak']:>9.1%}{r['vs_gpt']:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_gflops=peak / 1e9, shape=shape, batch=args.batch, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
