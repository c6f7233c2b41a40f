"""bench/gpu.sh's pieces on the CPU, so that the GPU script cannot rot between the rare GPU runs:
the script's syntax, bench_gpu.py's dry run (tiny shapes, compile with the 'eager' backend) and the
summary of its output."""

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench(monkeypatch):
    """The bench scripts as modules, run in this process (no second torch import)."""
    monkeypatch.syspath_prepend(str(BENCH))

    def run(script: str, *args: str) -> None:
        monkeypatch.setattr(sys, "argv", [script, *args])
        importlib.import_module(script).main()
    return run


def test_the_gpu_script_parses():
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(BENCH / "gpu.sh")], check=True)


@pytest.mark.e2e  # torch.compile's tracing takes most of its ~15 s
def test_bench_gpu_dry_run_measures_every_row_and_the_summary_tables_them(bench, tmp_path, capsys):
    jsonl = tmp_path / "bench.jsonl"
    bench("bench_gpu", "--cpu-dry-run", "--sizes", "1l", "--arches", "crate", "--compile", "off,on",
          "--warmup", "1", "--steps", "1", "--jsonl", str(jsonl))
    machine, *rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert machine["kind"] == "machine" and machine["datasheet_peak_tflops"] == 989.0
    assert [(r["model"], r["compile"]) for r in rows] == [("crate-1l", False), ("crate-1l-compiled", True)]
    assert all(r["tokens_per_s"] > 0 and r["mfu_measured_peak"] > 0 for r in rows)

    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite><testcase name="test_a"/><testcase name="test_b"><failure message="boom"/>'
        '</testcase></testsuite></testsuites>')
    capsys.readouterr()
    bench("gpu_summary", str(tmp_path), "--stage=tests=rc 1, 3 s")
    summary = capsys.readouterr().out
    assert "| tests | rc 1, 3 s |" in summary
    assert "1 passed, 1 failed" in summary and "| `test_b` | FAILED: boom |" in summary
    assert "| crate-1l | off |" in summary and "| crate-1l | on |" in summary


@pytest.mark.parametrize("args, message", [(["--batch", "q=3"], "--batch 'q=3'"), (["--compile", "yes"], "--compile"),
                                           (["--sizes", "xl"], "unknown size 'xl'")])
def test_bench_gpu_names_a_bad_argument(bench, args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench("bench_gpu", "--cpu-dry-run", "--jsonl", str(tmp_path / "b.jsonl"), *args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
