"""`make bench`: every benchmark, one after the other, and a table of the results in bench/results.md.

Each benchmark measures its rows side by side in one process (ratios, not absolute times, are what
carries over between machines); the smoke sweep's wall time stands in for the main job's shape.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> None:
    out = BENCH / "results.md"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run([sys.executable, str(BENCH / "bench_train.py"), "--json", str(tmp / "train.json")])
        run([sys.executable, str(BENCH / "bench_interp.py"), "--rounds", "1", "--json", str(tmp / "interp.json")])
        run([sys.executable, str(BENCH / "bench_allocator.py"), "--json", str(tmp / "allocator.json")])
        t0 = time.perf_counter()
        env = {**os.environ, "CRATELAB_CACHE": str(tmp / "cache")}
        subprocess.run([sys.executable, "-m", "cratelab", "ablate", str(BENCH.parent / "configs/seed-ablation.toml"),
                        "--out", str(tmp / "smoke"), "--smoke"], check=True, env=env, capture_output=True)
        smoke_s = time.perf_counter() - t0
        train = json.loads((tmp / "train.json").read_text())
        interp = json.loads((tmp / "interp.json").read_text())
        allocator = json.loads((tmp / "allocator.json").read_text())
    lines = [f"# Benchmarks ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
             f"{os.cpu_count()} cores)", "",
             f"## Training step (shape {train['shape']}, batch {train['batch']})", "",
             f"fp32 matmul peak measured in the same run: {train['peak_gflops']:.1f} GFLOP/s", "",
             "| model | tokens/s | GFLOP/s | of peak | vs GPT |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['tokens_per_s']:.0f} | {r['gflops']:.1f} | {r['frac_of_peak']:.1%} | "
              f"{r['vs_gpt']:.2f} |" for r in train["rows"]]
    lines += ["", f"## Freed memory kept in the heap (runtime.keep_freed_memory; {allocator['threads']} thread)", "",
              "| model | step s, glibc default | step s, kept | speedup | losses equal |", "|---|---:|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['step_s_default']:.3f} | {r['step_s_kept']:.3f} | {r['speedup']:.2f} | "
              f"{r['losses_equal']} |" for r in allocator["rows"]]
    lines += ["", "## Interpretability pipeline", "", "```", json.dumps(interp, indent=2), "```", "",
              f"## Smoke sweep (`cratelab ablate configs/seed-ablation.toml --smoke`, cold cache): {smoke_s:.0f} s", ""]
    out.write_text("\n".join(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
