"""The summary of one bench/gpu.sh run, as Markdown ready for docs/performance.md and bench/results.md:
the machine, each stage's exit status and time, pass/fail of every GPU test, the throughput table
(tokens/s, MFU) and the ablation runs that finished.

    python bench/gpu_summary.py RESULTS_DIR [--stage NAME=STATUS ...] [--elapsed S] [--ablation-config PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path


def test_outcomes(junit: Path) -> list[tuple[str, str, str]]:
    """(test, outcome, message) for every test case of a pytest JUnit XML file."""
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").splitlines()[0][:160] if node.get("message") else ""
                break
        cases.append((case.get("name", "?"), outcome, message))
    return cases


def bench_rows(jsonl: Path) -> tuple[dict, list[dict]]:
    """The machine line and the rows measured after it (the file's last run)."""
    machine, rows = {}, []
    for line in jsonl.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the time budget
            continue
        if item.get("kind") == "machine":
            machine, rows = item, []
        elif item.get("kind") == "row":
            rows.append(item)
    return machine, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--stage", action="append", default=[], metavar="NAME=STATUS")
    p.add_argument("--elapsed", type=int)
    p.add_argument("--ablation-config", default="")
    args = p.parse_args()
    out: list[str] = []

    machine, rows = bench_rows(args.results / "bench.jsonl") if (args.results / "bench.jsonl").is_file() else ({}, [])
    when = machine.get("date", "date unknown")
    out += [f"# bench/gpu.sh ({when})", ""]
    if machine:
        out += [f"Machine: {machine['device']}, torch {machine['torch']} (CUDA {machine['cuda']}), autocast "
                f"{machine['dtype']}. MFU against the datasheet bf16 dense peak of "
                f"{machine['datasheet_peak_tflops']:.0f} TFLOP/s; a {machine['dtype']} {machine['matmul_n']}^3 matmul "
                f"measured {machine['measured_matmul_tflops']:.1f} TFLOP/s in the same "
                "run (second MFU column).", ""]
    out += ["| stage | status |", "|---|---|"]
    out += [f"| {s.partition('=')[0]} | {s.partition('=')[2]} |" for s in args.stage]
    if args.elapsed is not None:
        out += [f"| total | {args.elapsed} s |"]
    out.append("")

    junit = args.results / "tests.xml"
    out += ["## GPU tests (`pytest -m gpu tests/test_gpu.py`)", ""]
    if junit.is_file():
        cases = test_outcomes(junit)
        outcomes = [outcome for _, outcome, _ in cases]
        counts = {o: outcomes.count(o) for o in ("passed", "FAILED", "ERROR", "skipped")}
        out += [", ".join(f"{n} {o.lower()}" for o, n in counts.items() if n), "", "| test | outcome |", "|---|---|"]
        out += [f"| `{name}` | {outcome}{': ' + message if message else ''} |" for name, outcome, message in cases]
    else:
        out.append("no tests.xml: the test stage did not finish")
    out.append("")

    out += ["## Training throughput (bench/bench_gpu.py: forward, backward, fused AdamW; random tokens)", ""]
    if rows:
        out += ["| model | compile | batch x context | tokens/s | TFLOP/s | MFU (datasheet) | MFU (measured peak) | "
                "first step s | peak GiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "error" in r:
                out.append(f"| {r['arch']}-{r['size']} | {'on' if r['compile'] else 'off'} | {r['batch']} x "
                           f"{r['context']} | {r['error']} | | | | | |")
                continue
            memory = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else ""
            out.append(f"| {r['arch']}-{r['size']} | {'on' if r['compile'] else 'off'} | {r['batch']} x {r['context']} "
                       f"| {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {r['mfu']:.1%} "
                       f"| {r['mfu_measured_peak']:.1%} "
                       f"| {r['first_step_s']:.1f} | {memory} |")
    else:
        out.append("no rows: the bench stage measured nothing")
    out.append("")

    out += [f"## Ablation ({args.ablation_config or 'no config'})", ""]
    results = args.results / "ablation-results.csv"
    if results.is_file():
        with results.open(newline="") as f:
            finished = list(csv.DictReader(f))
        out += [f"{len(finished)} runs finished (report: ablation-report.md)", "",
                "| run | val loss | train s | tokens |", "|---|---:|---:|---:|"]
        out += [f"| {r.get('name')} | {float(r['val_loss']):.4f} | {float(r['train_s']):.0f} | {r.get('tokens')} |"
                for r in finished if r.get("val_loss")]
    else:
        out.append("no runs finished (see the ablation stage's status and gpu.log)")
    print("\n".join(out))


if __name__ == "__main__":
    main()
