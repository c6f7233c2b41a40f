"""Run-level configuration: TOML files with sections [model], [data], [train], [eval], [interp], and [sweep] in
sweep configs; reading them (files, --smoke, --set) and comparing two of them. The [interp] section is
interp/config.py's, [sae] sae/config.py's.

Every field has a type and a range; unknown keys and bad values raise ConfigError naming the field
(``section.key``; validate.py), which the CLI turns into a one-line message and exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .interp.config import InterpConfig
from .runtime import require_memory
from .validate import choose, coerce, require, require_device, section_from_dict, setting


# Upper bounds that catch typos before a run starts: each unrolled ISTA step is a layer of the network,
# and no trainable model has a million-wide residual stream (each step would never end).
MAX_ISTA_STEPS = 64
MAX_OVERCOMPLETE = 64
MAX_N_EMBD = 65536
# torch's CPU generator (model init, dropout, the training batches) keeps the low 32 bits of a seed: seed 2**32
# would train exactly as seed 0, so two "seeds" would be one
MAX_SEED = 2**32 - 1


def require_seed(seed: int, name: str) -> None:
    require(0 <= seed <= MAX_SEED, name, f"must be in [0, {MAX_SEED}] (2^32 - 1), got {seed}" + (
        f": torch keeps the low 32 bits of a seed, so it would train as seed {seed % 2**32}" if seed > 0 else ""))


@dataclass
class ModelConfig:
    arch: str = setting("crate", '"crate" | "gpt"')
    n_layer: int = setting(2, "transformer blocks")
    n_head: int = setting(4, "attention heads (n_embd must divide by it)")
    n_embd: int = setting(128, "model (residual stream) dimension d")
    vocab_size: int = setting(0, "0: take the tokenizer's vocabulary size")
    block_size: int = setting(128, "context length in tokens")
    qkv: str = setting("shared", 'CRATE only: "shared" (MSSA, one U per head) | "separate" (GPT-style q, k, v)')
    # CRATE only (ignored for arch = "gpt", like qkv) from here to ista_steps; the defaults are the official model
    ffn: str = setting("ista", 'CRATE only: "ista" (sparse coding) | "mlp" (a ReLU MLP of the same width h in its '
                               "place)")
    ista_residual: bool = setting(False, "False: x = FFN(LN2 x) as the official code; True: x = x + FFN(LN2 x)")
    ista_decoder: str = setting("tied", '"tied" (output W^T A, official) | "separate" (a learned decoder D A, '
                                        "CRATE-alpha)")
    ista_lambda: float = setting(0.1, "ISTA sparsity weight λ")
    ista_step_size: float = setting(0.1, "ISTA step size η")
    ista_steps: int = setting(2, "unrolled ISTA steps per block")
    overcomplete: int = setting(4, "dictionary atoms per model dimension (h = overcomplete * n_embd); MLP width too")
    mlp_act: str = setting("relu", "the MLP's activation (GPT baseline; CRATE with ffn = \"mlp\"): \"relu\" (official) "
                                   '| "gelu"')
    dropout: float = setting(0.0, "dropout probability (0 = none)")
    bias: bool = setting(True, "GPT only, as nanoGPT's `bias`: false drops the biases of every Linear and LayerNorm "
                               "(the official GPT baseline's, whose counts the paper prints). For CRATE it means "
                               "what it means in the official code: nothing; CRATE keeps its fixed biases "
                               "(LayerNorms, attention output; none in U or the dictionary) either way")

    def validate(self, prefix: str = "model") -> None:
        p = prefix + "."
        choose(self.arch, ("crate", "gpt"), p + "arch")
        choose(self.qkv, ("shared", "separate"), p + "qkv")
        choose(self.mlp_act, ("relu", "gelu"), p + "mlp_act")
        choose(self.ffn, ("ista", "mlp"), p + "ffn")
        choose(self.ista_decoder, ("tied", "separate"), p + "ista_decoder")
        require(isinstance(self.ista_residual, bool), p + "ista_residual",
                 f"must be true or false, got {self.ista_residual!r}")
        require(isinstance(self.bias, bool), p + "bias", f"must be true or false, got {self.bias!r}")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "ista_steps", "overcomplete"):
            require(getattr(self, name) >= 1, p + name, f"must be >= 1, got {getattr(self, name)}")
        # each unrolled step is a layer of the network (and saved for backward); beyond these it is a typo
        require(self.ista_steps <= MAX_ISTA_STEPS, p + "ista_steps",
                 f"must be <= {MAX_ISTA_STEPS}, got {self.ista_steps}")
        require(self.overcomplete <= MAX_OVERCOMPLETE, p + "overcomplete",
                 f"must be <= {MAX_OVERCOMPLETE}, got {self.overcomplete}")
        require(self.n_embd <= MAX_N_EMBD, p + "n_embd", f"must be at most {MAX_N_EMBD}, got {self.n_embd}")
        require(self.vocab_size >= 0, p + "vocab_size", f"must be >= 0 (0 = from the tokenizer), got {self.vocab_size}")
        require(self.n_embd % self.n_head == 0, p + "n_embd",
                 f"must be divisible by model.n_head ({self.n_embd} % {self.n_head} != 0)")
        require(self.ista_lambda >= 0, p + "ista_lambda", f"must be >= 0, got {self.ista_lambda}")
        # ISTA descends only for eta < 2 / |W|_2^2 (about 0.1 at the official init): above 1 is a typo
        require(0 < self.ista_step_size <= 1, p + "ista_step_size", f"must be in (0, 1], got {self.ista_step_size}")
        require(0 <= self.dropout < 1, p + "dropout", f"must be in [0, 1), got {self.dropout}")

    @property
    def n_neurons(self) -> int:
        """Width of the interpreted layer: CRATE's sparse code A_T, or the GPT MLP hidden layer."""
        return self.overcomplete * self.n_embd

    def check_fits_in_memory(self) -> None:
        """Refuse, before a run builds the model, one whose float32 weights alone exceed this machine's memory
        (a typo such as n_layer = 10000000 would otherwise meet the out-of-memory killer, not an error)."""
        d, h = self.n_embd, self.n_neurons
        weights = 4 * ((self.vocab_size + self.block_size) * d + self.n_layer * (2 * d * d + d * h))  # a lower bound
        require_memory(weights, "model", f"n_layer {self.n_layer}, n_embd {d}, overcomplete {self.overcomplete}, "
                                         f"vocab_size {self.vocab_size}, block_size {self.block_size}",
                       "the weights alone")


@dataclass
class DataConfig:
    corpus: str = setting("default", '"default" (registry corpus built by `cratelab prepare`), "fixture" (small '
                                     "committed corpus), a directory of .txt/.jsonl documents, or "
                                     '"hf:NAME[:CONFIG]" (Hugging Face datasets, opt-in)')
    tokenizer: str = setting("bpe", '"bpe" (byte-level BPE trained on the corpus) | "gpt2" (offline r50k BPE)')
    bpe_vocab_size: int = setting(8192, 'vocabulary size of tokenizer "bpe"')
    cache_dir: str = setting("", '"": $CRATELAB_CACHE or ~/.cache/cratelab', execution=True)
    val_fraction: float = setting(0.05, "share of whole documents held out for validation")
    hf_split: str = setting("train", "hf: the split to stream")
    hf_text_field: str = setting("text", "hf: the field of a record that holds its text")
    hf_max_tokens: int = setting(10_000_000, "tokens to stream from a Hugging Face dataset")

    def validate(self, prefix: str = "data") -> None:
        p = prefix + "."
        require(bool(self.corpus), p + "corpus", "must not be empty")
        choose(self.tokenizer, ("bpe", "gpt2"), p + "tokenizer")
        require(257 <= self.bpe_vocab_size <= 65535, p + "bpe_vocab_size",
                f"must be in [257, 65535], got {self.bpe_vocab_size}")
        require(0 < self.val_fraction < 1, p + "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        require(self.hf_max_tokens >= 1, p + "hf_max_tokens", f"must be >= 1, got {self.hf_max_tokens}")


@dataclass
class TrainConfig:
    seed: int = setting(0, "model init, dropout and the training batches")
    batch_size: int = setting(16, "sequences per micro-step per process")
    grad_accum: int = setting(1, "micro-steps per optimizer step (per process)")
    max_steps: int = setting(1000, "optimizer steps")
    lr: float = setting(6e-4, "peak learning rate")
    min_lr: float = setting(6e-5, "the learning rate the schedule decays to")
    warmup_steps: int = setting(100, "steps of linear warmup from 0")
    schedule: str = setting("cosine", '"cosine": decay to min_lr over the whole run | "wsd" (warmup-stable-decay): '
                                      "lr held until the last `cooldown` share of the run, then a linear decay to "
                                      "min_lr; each tracked point (sweep.track) then branches a cooldown of its own "
                                      "from the stable phase, so it is the model a run of that budget would give")
    cooldown: float = setting(0.2, "schedule \"wsd\": the share of a budget (the run's, or a tracked point's) spent "
                                   "decaying")
    weight_decay: float = setting(0.1, "AdamW weight decay (matrices only)")
    beta1: float = setting(0.9, "AdamW β1")
    beta2: float = setting(0.95, "AdamW β2")
    grad_clip: float = setting(1.0, "0 disables clipping")
    eval_interval: int = setting(100, "steps between evaluations and checkpoints")
    device: str = setting("auto", '"auto" | "cpu" | "cuda" | "cuda:N" | "mps"', execution=True)
    dtype: str = setting("auto", '"auto" (bf16 where the hardware has it, else fp32) | "float32" | "bfloat16" | '
                                 '"float16"')
    compile: bool = setting(False, "run the model under torch.compile", execution=True)
    threads: int = setting(0, "torch intra-op threads on CPU; 0 = torch's default", execution=True)
    log: str = setting("none", '"none" | "tensorboard" | "wandb"', execution=True)
    wandb_project: str = setting("cratelab", 'the Weights & Biases project (train.log = "wandb")', execution=True)

    def validate(self, prefix: str = "train") -> None:
        p = prefix + "."
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval"):
            require(getattr(self, name) >= 1, p + name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "threads"):
            require(getattr(self, name) >= 0, p + name, f"must be >= 0, got {getattr(self, name)}")
        require_seed(self.seed, p + "seed")
        require(self.lr > 0, p + "lr", f"must be > 0, got {self.lr}")
        choose(self.schedule, ("cosine", "wsd"), p + "schedule")
        require(0 < self.cooldown < 1, p + "cooldown", f"must be in (0, 1), got {self.cooldown}")
        require(0 <= self.min_lr <= self.lr, p + "min_lr", f"must be in [0, train.lr], got {self.min_lr}")
        require(self.weight_decay >= 0, p + "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            require(0 <= getattr(self, name) < 1, p + name, f"must be in [0, 1), got {getattr(self, name)}")
        require(self.grad_clip >= 0, p + "grad_clip", f"must be >= 0, got {self.grad_clip}")
        require_device(self.device, p + "device")
        choose(self.dtype, ("auto", "float32", "bfloat16", "float16"), p + "dtype")
        choose(self.log, ("none", "tensorboard", "wandb"), p + "log")


@dataclass
class EvalConfig:
    tokens: int = setting(65536, "held-out tokens used for val_loss during training and by `cratelab eval`")
    dense_threshold: float = setting(0.1, 'a neuron is "dense" when it fires on more than this '
                                          "share of tokens", execution=True)

    def validate(self, prefix: str = "eval") -> None:
        require(self.tokens >= 1, prefix + ".tokens", f"must be >= 1, got {self.tokens}")
        require(0 < self.dense_threshold < 1, prefix + ".dense_threshold",
                f"must be in (0, 1), got {self.dense_threshold}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    interp: InterpConfig = field(default_factory=InterpConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


FACTOR_LEVEL_TYPES = (bool, int, float, str)
REFERENCE_ARM = "reference"  # Arm.of naming the reference condition (a CRATE + SAE arm)


@dataclass
class Arm:
    """A named condition outside the grid: the reference condition with `set` applied (e.g. the GPT baseline);
    or, with `of`, a sparse autoencoder on each interpreted layer of another condition's trained runs (the
    paper's GPT + SAE arm): `of` names that arm (or "reference"), `sae` holds [sae] settings (checked by
    SAEConfig when the sweep is planned), and `set` may change only interp.* settings."""

    name: str = setting(doc="the condition's name: its runs' stem and results.csv's condition")
    set: dict[str, Any] = setting(doc="section.key -> value: what the arm changes", factory=dict)
    of: str = setting("", '"": a trained arm; else the condition whose runs the SAEs are trained on')
    sae: dict[str, Any] = setting(doc="[sae] settings of an arm with `of`", factory=dict)

    @property
    def derived(self) -> bool:
        return bool(self.of)


LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclass
class SlurmConfig:
    """[sweep.slurm]: the Slurm job of each run of a sweep (sweep.launcher = "slurm", through submitit).
    The "submitit-local" launcher runs the same jobs as local processes and reads gpus_per_run alone."""

    partition: str = setting("", "sbatch --partition; \"\" = the cluster's default partition")
    account: str = setting("", "sbatch --account; \"\" = the user's default account")
    gpus_per_run: int = setting(1, "GPUs of each run's job, on one node; > 1: DDP, one Slurm task per GPU; 0: CPU only")
    cpus_per_task: int = setting(4, "CPU cores of each task (a run has one task, or one per GPU); its torch threads")
    mem_gb: int = setting(0, "memory of the job's node share; 0 = the partition's default")
    time_min: int = setting(240, "the job's time limit (sbatch --time), minutes")
    max_requeues: int = setting(3, "times a job preempted or out of time requeues itself (it resumes from its "
                                   "checkpoint)")
    extra: list[str] = setting(doc='more sbatch options, e.g. ["--qos=high", "--constraint=a100"]', factory=list)
    setup: list[str] = setting(doc='shell lines the job runs first, e.g. ["module load cuda"]', factory=list)

    def validate(self, prefix: str = "sweep.slurm") -> None:
        p = prefix + "."
        # every option becomes a line of the sbatch script: a newline (or any control character) would add lines
        for name, value in [("partition", self.partition), ("account", self.account),
                            *[(f"extra[{i}]", v) for i, v in enumerate(self.extra)],
                            *[(f"setup[{i}]", v) for i, v in enumerate(self.setup)]]:
            require(not any(unicodedata.category(c) == "Cc" for c in value), p + name,
                    f"must not hold control characters (a newline would add lines to the job's sbatch script), "
                    f"got {value!r}")
        for name in ("partition", "account"):
            value = getattr(self, name)
            require(value == value.strip() and not any(c.isspace() for c in value), p + name,
                    f"must be a Slurm name without spaces, got {value!r}")
        require(0 <= self.gpus_per_run <= 64, p + "gpus_per_run",
                f"must be in 0..64 (the GPUs of one node), got {self.gpus_per_run}")
        require(1 <= self.cpus_per_task <= 1024, p + "cpus_per_task", f"must be in 1..1024, got {self.cpus_per_task}")
        require(self.mem_gb >= 0, p + "mem_gb", f"must be >= 0 (0: the partition's default), got {self.mem_gb}")
        require(self.time_min >= 1, p + "time_min", f"must be >= 1 minute, got {self.time_min}")
        require(self.max_requeues >= 0, p + "max_requeues", f"must be >= 0, got {self.max_requeues}")
        for i, option in enumerate(self.extra):
            name = option.removeprefix("--").split("=", 1)[0]
            require(option.startswith("--") and bool(name) and all(c.isalnum() or c in "-_" for c in name),
                    f"{p}extra[{i}]", f"must be a long sbatch option, --name=value or --flag, got {option!r}")

    def sbatch_options(self) -> dict[str, str | bool]:
        """The `extra` options as sbatch option names -> values (True for a flag)."""
        options: dict[str, str | bool] = {}
        for option in self.extra:
            name, is_set, value = option.removeprefix("--").partition("=")
            options[name] = value if is_set else True
        return options


QUESTION_TESTS = ("difference", "equivalence", "both")


@dataclass
class Question:
    """One declared question: an effect of the design on one metric (docs/statistics.md). effect: "FACTOR = LEVEL"
    (that level minus the reference level), "FACTOR per doubling", "FACTOR curvature", an arm's name (the arm
    minus the reference condition) or "F1 = a × F2 = b" (an interaction); metric: a results.csv column."""

    effect: str = setting("", 'the effect asked about, e.g. "model.qkv = separate"')
    metric: str = setting("", 'a results.csv column, e.g. "val_loss"')
    test: str = setting("difference", '"difference" (is it not 0?) | "equivalence" (is it within ±margin?) | "both"')
    margin: float = setting(0.0, "the smallest effect that matters, in the metric's units; 0 = "
                                 "[sweep.questions.margins]'s")


@dataclass
class QuestionsConfig:
    """[sweep.questions]: what the sweep is run to answer, declared before it runs. Holm's step-down test within
    the primary and within the secondary family at level alpha; every other effect and metric is exploratory
    (intervals only, never a decision)."""

    alpha: float = setting(0.05, "the family-wise error rate of each family")
    primary: list[Question] = setting(doc="the primary questions ([[sweep.questions.primary]])", factory=list)
    secondary: list[Question] = setting(doc="the secondary questions ([[sweep.questions.secondary]])", factory=list)
    margins: dict[str, float] = setting(doc="per metric, the smallest effect that matters (its units; "
                                            "per doubling for slopes): the equivalence margin, and "
                                            "the band within which an answer counts as settled along "
                                            "training", factory=dict)

    def families(self) -> dict[str, list[Question]]:
        return {"primary": self.primary, "secondary": self.secondary}

    def margin(self, question: Question) -> float | None:
        return question.margin or self.margins.get(question.metric)

    def validate(self, prefix: str = "sweep.questions") -> None:
        """The values alone; whether each effect and metric exists in the design: report.decide.check_questions."""
        p = prefix + "."
        require(0 < self.alpha < 0.5, p + "alpha", f"must be in (0, 0.5), got {self.alpha}")
        for metric, margin in self.margins.items():
            require(margin > 0, f"{p}margins.{metric}", f"must be > 0, got {margin}")
        for family, questions in self.families().items():
            seen = set()
            for i, q in enumerate(questions):
                name = f"{p}{family}[{i}]"
                require(bool(q.effect), name + ".effect", "must name an effect, e.g. \"model.qkv = separate\"")
                require(bool(q.metric), name + ".metric", "must name a results.csv column, e.g. \"val_loss\"")
                choose(q.test, QUESTION_TESTS, name + ".test")
                require(q.margin >= 0, name + ".margin", f"must be >= 0 (0: the metric's margin), got {q.margin}")
                require(self.margin(q) is not None, name + ".margin",
                        f"no margin for {q.metric}: set {p}margins.{q.metric} or this question's margin")
                require((q.effect, q.metric) not in seen, name, f"asks about {q.effect} on {q.metric} twice")
                seen.add((q.effect, q.metric))
        both = {(q.effect, q.metric) for q in self.primary} & {(q.effect, q.metric) for q in self.secondary}
        require(not both, p + "secondary", f"repeats a primary question: {sorted(both)[0] if both else ''}")


def main_key(factor: str, level: Any) -> str:
    """An effect's name in [sweep.questions] and answers.csv: a level against the reference level."""
    return f"{factor} = {level_text(level)}"


def slope_key(factor: str) -> str:
    return f"{factor} per doubling"


def curvature_key(factor: str) -> str:
    return f"{factor} curvature"


def interaction_key(first: str, a: Any, second: str, b: Any) -> str:
    return f"{main_key(first, a)} × {main_key(second, b)}"


@dataclass
class SweepConfig:
    """The [sweep] section of a sweep config (`cratelab ablate`): a full grid over factors (any run-config
    field, "section.key" -> levels), named arms outside the grid, seeds, and the reference condition that
    contrasts are taken against. Whether each key and level is valid is checked by building every run's
    config (sweep.expand), before anything runs."""

    seeds: list[int] = setting(doc="training seeds: every condition runs each", factory=lambda: [0, 1, 2])
    factors: dict[str, list[Any]] = setting(doc='"section.key" -> its levels: a full grid over them', factory=dict)
    reference: dict[str, Any] = setting(doc="a level per factor; default: each factor's first", factory=dict)
    arms: list[Arm] = setting(doc="named conditions outside the grid ([[sweep.arms]])", factory=list)
    workers: int = setting(1, "runs trained at once on this machine (each gets cores / workers "
                              "threads; on several GPUs, spread over them)", execution=True)
    launcher: str = setting("local", "local: processes here | slurm: a Slurm job per run | "
                                     "submitit-local: those jobs here", execution=True)
    slurm: SlurmConfig = setting(doc="[sweep.slurm]: each run's Slurm job", factory=SlurmConfig, execution=True)
    track: list[float] = setting(doc="fractions of train.max_steps at which each run also keeps its "
                                     "checkpoint, evaluated and scored like the final one (the final "
                                     "point, 1.0, is the run itself); [] tracks nothing", factory=list)
    questions: QuestionsConfig = setting(doc="[sweep.questions]", factory=QuestionsConfig)

    def validate(self, prefix: str = "sweep") -> None:
        p = prefix + "."
        self.questions.validate(p + "questions")
        require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), p + "seeds",
                f"must list distinct seeds, got {self.seeds}")
        for seed in self.seeds:
            require_seed(seed, p + "seeds")
        for key, levels in self.factors.items():
            name = f"{p}factors.{key}"
            require(len(key.split(".")) == 2 and all(key.split(".")), name, "a factor is a run-config field "
                    "written as section.key, e.g. model.ista_lambda")
            require(key not in ("train.seed", "interp.seed"), name, "seeds are set by sweep.seeds")
            require(isinstance(levels, list) and len(levels) >= 1, name, f"must list its levels, got {levels!r}")
            for i, level in enumerate(levels):
                require(isinstance(level, FACTOR_LEVEL_TYPES), f"{name}[{i}]",
                        f"a level is a number, string or boolean, got {level!r}")
            seen: dict[tuple[str, str], Any] = {}
            for level in levels:
                same = seen.setdefault(_level_key(key, level), level)
                require(same is level, name, f"lists the level {level_text(level)} twice: {levels}"
                        if level_text(same) == level_text(level) else f"levels {level_text(same)} and "
                        f"{level_text(level)} are the same value for {key}: two identical conditions")
        for key, value in self.reference.items():
            require(key in self.factors, f"{p}reference.{key}", f"is not a factor (factors: "
                    f"{', '.join(self.factors) or 'none'})")
            require(_level_key(key, value) in [_level_key(key, v) for v in self.factors[key]], f"{p}reference.{key}",
                    f"must be one of the factor's levels {self.factors[key]}, got {value!r}")
        names = [arm.name for arm in self.arms]
        trained = [arm.name for arm in self.arms if not arm.derived]
        for i, arm in enumerate(self.arms):
            name = f"{p}arms[{i}]"
            require(bool(arm.name) and all(c.isalnum() or c in "._-+" for c in arm.name), name + ".name",
                    f"must be a non-empty name of letters, digits and . _ - +, got {arm.name!r}")
            require(names.count(arm.name) == 1, name + ".name", f"two arms are named {arm.name!r}")
            require(arm.name != REFERENCE_ARM, name + ".name", f"{REFERENCE_ARM!r} names the reference condition")
            require(arm.derived or bool(arm.set), name + ".set", "must set at least one section.key")
            require(arm.derived or not arm.sae, name + ".sae", "needs `of`: the condition the SAEs are trained on")
            require(not arm.derived or arm.of in (REFERENCE_ARM, *trained), name + ".of",
                    f"must name a trained arm or {REFERENCE_ARM!r} (arms: {', '.join(trained) or 'none'}), "
                    f"got {arm.of!r}")
            for key in arm.set:
                require(len(key.split(".")) == 2 and all(key.split(".")), f"{name}.set.{key}",
                        "must be a run-config field written as section.key")
                require(key not in ("train.seed", "interp.seed"), f"{name}.set.{key}",
                        f"arm {arm.name!r} sets a seed, but seeds are set by sweep.seeds (every arm runs each)")
                require(not arm.derived or key.startswith("interp."), f"{name}.set.{key}",
                        "an arm with `of` uses its base's model and training: it may set interp.* only")
        require(self.workers >= 1, p + "workers", f"must be >= 1, got {self.workers}")
        choose(self.launcher, LAUNCHERS, p + "launcher")
        self.slurm.validate(p + "slurm")
        for i, fraction in enumerate(self.track):
            require(0 < fraction <= 1, f"{p}track[{i}]", f"a fraction of train.max_steps in (0, 1], got {fraction}")
        require(len(set(self.track)) == len(self.track), p + "track", f"lists a fraction twice: {self.track}")

    def reference_levels(self) -> dict[str, Any]:
        """The reference condition: the declared level of each factor (as the factor lists it: a reference
        of 1 names the level 1.0 of a float field), else its first level."""
        return {key: next((level for level in levels if key in self.reference
                           and _level_key(key, level) == _level_key(key, self.reference[key])), levels[0])
                for key, levels in self.factors.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def level_text(value: Any) -> str:
    """A factor level as run names and result tables write it (floats exactly, booleans as TOML does)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _level_key(key: str, level: Any) -> tuple[str, str]:
    """A level as its field holds it, so that two spellings of one value (1 and 1.0 for a float field) are
    one level; a level the field refuses is kept as written (building its condition's config says why)."""
    section, _, leaf = key.partition(".")
    typ = typing.get_type_hints(RunConfig).get(section)
    typ = typing.get_type_hints(typ).get(leaf) if typ else None
    if typ in (bool, int, float, str):
        try:
            level = coerce(level, typ, key)
        except ConfigError:
            pass
    return type(level).__name__, level_text(level)


def _dotted(values: Any, name: str) -> dict[str, Any]:
    """A table of "section.key" entries, also accepted as nested tables (what `--set sweep.factors.a.b=...`
    makes): {"model": {"qkv": x}} -> {"model.qkv": x}."""
    if not isinstance(values, dict):
        raise ConfigError(name, f"must be a table, got {type(values).__name__}")
    flat: dict[str, Any] = {}
    for key, value in values.items():
        for dotted, leaf in (_dotted(value, f"{name}.{key}") if isinstance(value, dict) else {"": value}).items():
            dotted = f"{key}.{dotted}" if dotted else key
            # "model.qkv" = [...] beside model.qkv = [...] (or a [model] table): one would silently win
            require(dotted not in flat, f"{name}.{dotted}", "given twice: as a quoted \"section.key\" and as a "
                    "dotted key or table; keep one")
            flat[dotted] = leaf
    return flat


def questions_from_dict(values: Any) -> QuestionsConfig:
    """[sweep.questions], type-checked: its margins are a table of metric -> number."""
    name = "sweep.questions"
    if not isinstance(values, dict):
        raise ConfigError(name, f"must be a table, got {type(values).__name__}")
    values = dict(values)
    margins = values.pop("margins", {})
    if not isinstance(margins, dict):
        raise ConfigError(name + ".margins", f"must be a table of metric = margin, got {type(margins).__name__}")
    margins = {metric: coerce(value, float, f"{name}.margins.{metric}") for metric, value in margins.items()}
    return dataclasses.replace(section_from_dict(QuestionsConfig, values, name), margins=margins)


def sweep_from_dict(values: Any) -> SweepConfig:
    """The [sweep] section, type-checked and validated (its factor levels are checked by sweep.expand)."""
    if not isinstance(values, dict):
        raise ConfigError("sweep", f"must be a table, got {type(values).__name__}")
    values = dict(values)
    tables = {"factors": _dotted(values.pop("factors", {}), "sweep.factors"),
              "reference": _dotted(values.pop("reference", {}), "sweep.reference"),
              "questions": questions_from_dict(values.pop("questions", {}))}
    arms = values.pop("arms", [])
    if not isinstance(arms, list):
        raise ConfigError("sweep.arms", f"must be a list of tables ([[sweep.arms]]), got {type(arms).__name__}")
    tables["arms"] = []
    for i, arm in enumerate(arms):
        name = f"sweep.arms[{i}]"
        if not isinstance(arm, dict):
            raise ConfigError(name, f"must be a table with name and set, got {type(arm).__name__}")
        unknown = sorted(set(arm) - {"name", "set", "of", "sae"})
        require(not unknown, f"{name}.{unknown[0] if unknown else ''}", "unknown key (known: name, of, sae, set)")
        sae = arm.get("sae", {})
        require(isinstance(sae, dict), name + ".sae", f"must be a table of [sae] settings, got {type(sae).__name__}")
        tables["arms"].append(Arm(coerce(arm.get("name", ""), str, name + ".name"),
                                  _dotted(arm.get("set", {}), name + ".set"),
                                  coerce(arm.get("of", ""), str, name + ".of"), dict(sae)))
    plain = {f.name for f in dataclasses.fields(SweepConfig)} - set(tables)
    unknown = sorted(set(values) - plain)
    require(not unknown, f"sweep.{unknown[0] if unknown else ''}",
            f"unknown key (known: {', '.join(sorted({f.name for f in dataclasses.fields(SweepConfig)}))})")
    sweep = dataclasses.replace(section_from_dict(SweepConfig, values, "sweep"), **tables)
    sweep.validate()
    # the tracked points are a set: [1.0, 0.5] is [0.5, 1.0] (and resumes a sweep.toml that holds it so)
    return dataclasses.replace(sweep, track=sorted(sweep.track))


# `--smoke`: the whole pipeline, every condition, two seeds, in about two minutes on a 2-core CPU
SMOKE_OVERRIDES = [
    'data.corpus="fixture"', "data.bpe_vocab_size=512", "model.n_embd=32", "model.n_head=2", "model.block_size=64",
    "train.batch_size=8", "train.max_steps=30", "train.warmup_steps=5", "train.eval_interval=30",
    "eval.tokens=4096", "interp.tokens=16384", "interp.neurons=16",
    "interp.bootstrap=200", "interp.max_cards=4", "sweep.seeds=[0, 1]",
]


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    sections = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    hints = typing.get_type_hints(RunConfig)
    built = {}
    for key, value in values.items():
        if key not in sections:
            raise ConfigError(key, f"unknown section (known: {', '.join(sections)})")
        built[key] = section_from_dict(hints[key], value, key)
    cfg = RunConfig(**built)
    cfg.validate()
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value``; the value is read as a TOML value, or as a bare string."""
    if "=" not in text:
        raise ConfigError("--set", f"expected section.key=value, got {text!r}")
    dotted, raw = text.split("=", 1)
    path = dotted.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError("--set", f"expected section.key=value, got {text!r}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words such as `model.arch=gpt`; type checking happens afterwards
    return path, value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        target, leaf = values, path[-1]
        for i, part in enumerate(path[:-1]):
            if ".".join(path[i:]) in target:  # a quoted "model.qkv" (a sweep's factors, reference, arm set): replaced
                leaf = ".".join(path[i:])
                break
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(".".join(path), "is not a table")
        target[leaf] = value
    return values


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError("", f"{path} is a folder: expected a TOML config file")
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    try:
        # utf-8-sig: editors on Windows start files with a byte-order mark, which TOML calls an invalid statement
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("", f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError("", f"{path}: not UTF-8 text (byte {err.start}): is it a TOML config?") from None


def config_values(source: str | Path | dict[str, Any] | None, overrides: list[str] = (), *,
                  smoke: bool = False) -> dict[str, Any]:
    """The one way every command reads a config: a TOML file, a mapping of values (a checkpoint's config),
    or None for the defaults; then the ``--smoke`` settings, then the ``--set`` overrides (not yet validated)."""
    values = read_toml(source) if isinstance(source, (str, Path)) else copy.deepcopy(source or {})
    return apply_overrides(values, (SMOKE_OVERRIDES if smoke else []) + list(overrides))


def load_config(source: str | Path | dict[str, Any] | None, overrides: list[str] = ()) -> RunConfig:
    """A run config (see config_values), validated."""
    return config_from_dict(config_values(source, overrides))


def load_sweep_config(source: str | Path | dict[str, Any] | None, overrides: list[str] = (), *,
                      smoke: bool = False) -> tuple[RunConfig, SweepConfig]:
    """A sweep config: a run config (the settings its runs share) plus a [sweep] section, validated."""
    values = config_values(source, overrides, smoke=smoke)
    sweep = sweep_from_dict(values.pop("sweep", {}))
    return config_from_dict(values), sweep


def flat_settings(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict's values by dotted name: {"interp": {"backend": {"device": x}}} -> {"interp.backend.device": x}."""
    flat = {}
    for key, value in values.items():
        flat.update(flat_settings(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def execution_settings(cls: type, prefix: str = "") -> frozenset[str]:
    """The dotted names of the fields of a config dataclass (its nested sections included) whose metadata says
    they are EXECUTION: where and how it runs, not what it computes."""
    names: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("execution"):
            names.add(prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]):
            names |= execution_settings(hints[f.name], f"{prefix}{f.name}.")
    return frozenset(names)


def changed_values(old: dict[str, Any], new: dict[str, Any],
                   accepted: frozenset[str] = frozenset()) -> dict[str, tuple[Any, Any]]:
    """Each dotted field (``section.key``, ``interp.backend.key``) whose value differs between two config dicts (as
    RunConfig.to_dict gives them) -> (old value, new value), except the fields in ``accepted`` and those under a
    section it names; a field one side lacks is None there. The one comparison that decides whether a run, sweep,
    interpret or SAE folder may be resumed with a config."""
    a, b = flat_settings(old), flat_settings(new)
    return {name: (a.get(name), b.get(name)) for name in sorted(set(a) | set(b))
            if a.get(name) != b.get(name) and not any(name == ok or name.startswith(ok + ".") for ok in accepted)}


def changed_settings(old: dict[str, Any], new: dict[str, Any], accepted: frozenset[str] = frozenset()) -> list[str]:
    """changed_values as "name old -> new", for an error that names each changed field."""
    return [f"{name} {was!r} -> {now!r}" for name, (was, now) in changed_values(old, new, accepted).items()]


def dump_toml(cfg: RunConfig) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.to_dict())
