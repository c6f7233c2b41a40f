#!/usr/bin/env bash
# The GPU checks of cratelab in one run of at most 8 minutes (bench/gpu.md says more):
#   1. tests: the GPU-marked tests (pytest -m gpu tests/test_gpu.py)
#   2. bench: training throughput of the paper's 1L/3L/B CRATE and GPT shapes, bf16, compile off/on
#      (bench/bench_gpu.py), tokens/s and MFU
#   3. ablation: a seed-ablation config (default configs/seed-ablation-long.toml; skipped if absent)
#      with several runs sharing the GPU, then `cratelab report` on the runs that finished
#   4. summary: one Markdown summary (bench/gpu_summary.py), ready for docs/performance.md
#
#   bash bench/gpu.sh [--cpu-dry-run] [ABLATION_CONFIG]
#
# Results go to $OUT if set, else bench/gpu-results/: gpu.log, tests.xml, bench.jsonl,
# ablation-results.csv, ablation-report.md, summary.md. --cpu-dry-run runs every stage tiny on the
# CPU (the smoke sweep for the ablation) to check the script itself.
#
# The GPU machine reaches no package registry. It uses its own python3 and torch ($PYTHON to change);
# cratelab runs from src/ (PYTHONPATH). Missing pure-Python packages travel as wheels in .whl/, which
# this script installs into /tmp/site (bench/gpu.md: how to download them). A sweep on the default
# corpus needs the corpus cache brought along in .gpu-cache/ ($CRATELAB_CACHE to change).
#
# Time budgets in seconds (each stage also ends when the 8-minute total is spent):
#   GPU_TESTS_S (150), GPU_BENCH_S (210), GPU_ABLATION_S (60), GPU_REPORT_S (30), GPU_TOTAL_S (480);
#   ABLATION_WORKERS (4): runs trained at once on the GPU; GPU_STAGES (tests,bench,ablation): the
#   stages to run, e.g. GPU_STAGES=tests to rerun the tests alone after a fix.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

dry_run=0
if [[ ${1:-} == --cpu-dry-run ]]; then
  dry_run=1
  shift
fi
ablation_config=${1:-configs/seed-ablation-long.toml}
results=${OUT:-bench/gpu-results}
py=${PYTHON:-python3}
total=${GPU_TOTAL_S:-480}
stages=${GPU_STAGES:-tests,bench,ablation}
log=$results/gpu.log
mkdir -p "$results" || exit 2
: >"$log"
start=$SECONDS
stage_status=()

say() { echo "$*" | tee -a "$log"; }
wanted() { [[ ,$stages, == *,$1,* ]]; }

# stage NAME BUDGET COMMAND...: run COMMAND under `timeout` (at most what is left of the total),
# output to the terminal and gpu.log; records "NAME=rc R, S s" (rc 124, or 137 after the SIGKILL that
# follows SIGINT by 10 s: out of time).
stage() {
  local name=$1 budget=$2 left t0 rc
  shift 2
  left=$((total - (SECONDS - start) - 10))  # 10 s for --kill-after
  ((budget > left)) && budget=$left
  if ((budget < 5)); then
    say "== $name: skipped, the ${total} s total is spent"
    stage_status+=("$name=skipped: no time left")
    return 0
  fi
  say "== $name (budget ${budget} s): $*"
  t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$budget" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  say "== $name: rc $rc after $((SECONDS - t0)) s$( ((rc == 124 || rc == 137)) && echo ' (out of time)')"
  stage_status+=("$name=rc $rc, $((SECONDS - t0)) s$( ((rc == 124 || rc == 137)) && echo ', out of time')")
}

# ---- the environment: wheels brought along, cratelab from src/
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "installing .whl/ failed"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

((dry_run)) || nvidia-smi -L 2>&1 | tee -a "$log"
"$py" - <<'EOF' 2>&1 | tee -a "$log"
import importlib.util, platform
import torch
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"GPU: {torch.cuda.get_device_name(0) if cuda else 'none'}")
needed = ["numpy", "tqdm", "tomli_w", "tokenizers", "pytest", "safetensors", "matplotlib", "tiktoken"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
print("missing Python packages (bring wheels in .whl/, see bench/gpu.md):", ", ".join(missing) if missing else "none")
EOF
if ! "$py" -c "import torch, cratelab" 2>>"$log"; then
  say "torch or cratelab cannot be imported with $py (PYTHONPATH=$PYTHONPATH)"
  exit 2
fi
if ((!dry_run)) && ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  say "no CUDA GPU visible to torch: run on a GPU machine, or use --cpu-dry-run"
  exit 2
fi

# ---- 1. the GPU-marked tests
rm -f "$results/tests.xml"
if wanted tests; then
  stage tests "${GPU_TESTS_S:-150}" "$py" -m pytest -m gpu -v -rA -p no:cacheprovider tests/test_gpu.py \
    --junitxml="$results/tests.xml"
fi

# ---- 2. throughput of the paper's shapes
rm -f "$results/bench.jsonl"
if ! wanted bench; then
  :
elif ((dry_run)); then
  stage bench "${GPU_BENCH_S:-210}" "$py" bench/bench_gpu.py --cpu-dry-run --warmup 1 --steps 2 \
    --jsonl "$results/bench.jsonl"
else
  stage bench "${GPU_BENCH_S:-210}" "$py" bench/bench_gpu.py --jsonl "$results/bench.jsonl"
fi

# ---- 3. the seed ablation, several runs sharing the GPU
sweep_dir=${TMPDIR:-/tmp}/cratelab-gpu-ablation
rm -rf "$sweep_dir" "$results/ablation-results.csv" "$results/ablation-report.md"
if ! wanted ablation; then
  :
elif ((dry_run)); then
  # the smoke sweep's first two runs, shrunk further, on the CPU; the fixture corpus needs no cache
  export CRATELAB_CACHE=${TMPDIR:-/tmp}/cratelab-gpu-dry-cache
  ablation_config="configs/seed-ablation.toml --smoke (2 runs, 4 steps: dry run)"
  stage ablation "${GPU_ABLATION_S:-60}" "$py" -m cratelab ablate configs/seed-ablation.toml --smoke \
    --out "$sweep_dir" --workers 2 --only crate-shared-lam0.1-s0 --only gpt-relu-s0 \
    --set train.max_steps=4 --set train.eval_interval=4 --set interp.tokens=4096
elif [[ ! -f $ablation_config ]]; then
  say "== ablation: skipped: $ablation_config does not exist (give a sweep config as the argument)"
  stage_status+=("ablation=skipped: $ablation_config does not exist")
else
  export CRATELAB_CACHE=${CRATELAB_CACHE:-$PWD/.gpu-cache}
  corpus=$("$py" -c "import sys; from cratelab.config import load_sweep_config; print(load_sweep_config(sys.argv[1])[0].data.corpus)" \
    "$ablation_config" 2>>"$log")
  # the default corpus' folder is keyed by the code that builds it: cratelab names it
  corpus_dir=$("$py" -c "import sys; from cratelab.data.corpus import default_corpus_dir; print(default_corpus_dir(sys.argv[1]))" \
    "$CRATELAB_CACHE" 2>>"$log")
  if [[ $corpus == default && ! -f $corpus_dir/manifest.json ]]; then
    say "== ablation: skipped: $ablation_config uses the default corpus and $CRATELAB_CACHE holds none" \
      "(build it where the registries are reachable and bring it along: bench/gpu.md)"
    stage_status+=("ablation=skipped: no default corpus in $CRATELAB_CACHE")
  else
    stage ablation "${GPU_ABLATION_S:-60}" "$py" -m cratelab ablate "$ablation_config" --out "$sweep_dir" \
      --workers "${ABLATION_WORKERS:-4}" --set train.device=cuda
  fi
fi
if [[ -f $sweep_dir/sweep.toml ]]; then  # the runs that finished, also when the budget cut the sweep short
  stage report "${GPU_REPORT_S:-30}" "$py" -m cratelab report "$sweep_dir"
  [[ -f $sweep_dir/results.csv ]] && cp "$sweep_dir/results.csv" "$results/ablation-results.csv"
  [[ -f $sweep_dir/report.md ]] && cp "$sweep_dir/report.md" "$results/ablation-report.md"
fi

# ---- 4. one summary
"$py" bench/gpu_summary.py "$results" --elapsed "$((SECONDS - start))" --ablation-config "$ablation_config" \
  "${stage_status[@]/#/--stage=}" | tee "$results/summary.md"
echo "results in $results"
