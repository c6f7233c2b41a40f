"""Every `cratelab` command the docs show runs: each one in a fenced shell block of README.md and docs/*.md, and
each line of the README's command table (a command in its documented default form), run as a user would, as a
real process, with its paths moved into a tmp folder and smoke settings appended. A command that needs what a
test machine lacks is skipped by name, with the reason, in NEEDS; a newly documented command runs unless
someone says there why it cannot."""

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import torch

from tests.models.reference import random_official_state_dict

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
TINY = "configs/tiny.toml"
SWEEP = "configs/seed-ablation.toml"

NEEDS = {  # documented commands a test machine cannot run, by where they are documented
    "docs/commands.md:78": "torchrun with 8 GPUs, and the network (a Hugging Face dataset)",
    "docs/slurm.md:13": "a Slurm cluster (it submits the jobs and waits for them)",
}

# appended to each command (later settings win): the documented command on a toy model in seconds
SMOKE = {
    "prepare": ["--set", 'data.corpus="fixture"'],  # the default corpus needs the package registries, hf: the network
    "train": ["--set", "train.max_steps=2", "--set", "train.eval_interval=2", "--set", "eval.tokens=512"],
    "eval": [],  # the run's eval.tokens: the README's run was trained with 512
    "generate": [],
    "import-official": [],
    "interpret": ["--neurons", "2", "--tokens", "2048", "--set", "interp.bootstrap=50"],
    "sae": ["--set", "sae.tokens=512", "--set", "sae.batch_size=64", "--set", "sae.buffer_tokens=256",
            "--set", "sae.expansion_factor=2", "--set", "sae.eval_tokens=256", "--set", 'sae.device="cpu"',
            "--set", "sae.threads=1"],
    # one run of the smoke sweep, scored once (the pipeline, not a comparison); without the declared questions,
    # about effects one run does not have
    "ablate": ["--smoke", "--set", "sweep.seeds=[0]", "--set", "sweep.factors.model.ista_lambda=[0.1]",
               "--set", 'sweep.factors.model.qkv=["shared"]', "--set", "sweep.arms=[]", "--set", "sweep.track=[1.0]",
               "--set", "sweep.questions={}", "--set", "train.max_steps=10", "--set", "train.eval_interval=10",
               "--set", "interp.neurons=4", "--set", "interp.tokens=4096"],
    "report": [],
}


@dataclass(frozen=True)
class Documented:
    where: str  # file:line of its first line
    argv: tuple[str, ...]  # the words after `cratelab`


def cratelab_words(words: list[str]) -> tuple[str, ...] | None:
    """The arguments of a cratelab command line (`cratelab ...` or `... -m cratelab ...`), None for another program."""
    for i, word in enumerate(words):
        if word == "cratelab" and (i == 0 or words[i - 1] == "-m"):
            return tuple(words[i + 1:])
    return None


def shell_block_commands(path: Path) -> list[Documented]:
    """The cratelab commands of PATH's fenced shell blocks: continuation lines joined, comments dropped."""
    name = str(path.relative_to(ROOT))
    commands, language, first, text = [], None, 0, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            language = line.strip()[3:].strip() if language is None else None
            continue
        if language not in SHELL_BLOCKS or (language == "console" and not text and not line.startswith("$ ")):
            continue  # a console block's commands are its `$ ` lines, the rest is their output
        if not text:
            first = number
        text += line.removeprefix("$ ").rstrip()
        if text.endswith("\\"):
            text = text[:-1]
            continue
        argv = cratelab_words(shlex.split(text, comments=True))
        if argv is not None:
            commands.append(Documented(f"{name}:{first}", argv))
        text = ""
    return commands


def command_table(path: Path) -> list[Documented]:
    """The README's one line per command (`cratelab eval RUN`): each command with its documented defaults."""
    rows = (re.match(r"\| `cratelab ([^`]+)` \|", line) for line in path.read_text().splitlines())
    return [Documented(f"{path.name}:{number}", tuple(word.strip("[]") for word in shlex.split(row[1])))
            for number, row in enumerate(rows, 1) if row]


DOCUMENTED = [*command_table(ROOT / "README.md"), *(c for path in DOCS for c in shell_block_commands(path))]


def test_each_command_has_smoke_settings_and_each_skip_is_a_documented_command():
    assert {c.argv[0] for c in DOCUMENTED} == set(SMOKE)
    assert set(NEEDS) <= {c.where for c in DOCUMENTED}, "NEEDS names a command the docs no longer show there"


def cratelab(argv: list, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRATELAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cratelab", *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, \
        f"cratelab {shlex.join(map(str, argv))} -> exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


INPUTS = {"eval": "run", "generate": "run", "interpret": "run", "sae": "run", "report": "sweep",
          "import-official": "official"}  # each command's first argument: what the Workspace gives it
OUTPUTS = {"train": "run", "ablate": "sweep"}  # the README's `--out DIR` of these is what later commands read


class Workspace:
    """What the documented commands act on, each built once a session; a shared data cache. The README's
    `cratelab train CONFIG --out DIR` writes the run that eval, generate, interpret and sae read, its
    `cratelab ablate CONFIG --out DIR` the sweep that report reads; built here when a test needs one first."""

    def __init__(self, root: Path):
        self.root, self.cache = root, root / "cache"

    @property
    def run(self) -> Path:
        return self._written_by(("train", "CONFIG", "--out", "DIR"))

    @property
    def sweep(self) -> Path:
        return self._written_by(("ablate", "CONFIG", "--out", "DIR"))

    def _written_by(self, argv: tuple[str, ...]) -> Path:
        out = self.root / OUTPUTS[argv[0]]
        if not out.exists():
            cratelab(self.arguments(argv, out), self.cache)
        return out

    @cached_property
    def official(self) -> Path:
        """A checkpoint in the official crate-lm format (random weights)."""
        path = self.root / "ckpt-crate-official.pt"
        state = random_official_state_dict(2, 32, 50304, 64, seed=1)
        torch.save({"model": {"_orig_mod." + k: v.float() for k, v in state.items()},
                    "model_args": dict(n_layer=2, n_head=4, n_embd=32, block_size=64, bias=True, vocab_size=50304,
                                       dropout=0.0)}, path)
        return path

    def arguments(self, argv: tuple[str, ...], out: Path) -> list:
        """ARGV with its input given (the docs name runs and folders of their own machine), placeholders filled,
        --out moved to OUT (or to the shared folder the README's `--out DIR` writes) and smoke settings appended."""
        command, *args = argv
        if command in INPUTS:
            args[0] = getattr(self, INPUTS[command])
        if "--out" in args:
            at = args.index("--out") + 1
            args[at] = self.root / OUTPUTS[command] if args[at] == "DIR" and command in OUTPUTS else out
        placeholders = {"CONFIG": SWEEP if command == "ablate" else TINY, "TEXT": "In the beginning"}
        return [command, *(placeholders.get(word, word) for word in args), *SMOKE[command]]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("docs"))


@pytest.mark.e2e
@pytest.mark.parametrize("documented", DOCUMENTED, ids=[c.where for c in DOCUMENTED])
def test_a_documented_command_runs(documented, workspace, tmp_path):
    if documented.where in NEEDS:
        pytest.skip(f"needs {NEEDS[documented.where]}")
    cratelab(workspace.arguments(documented.argv, tmp_path / "out"), workspace.cache)
