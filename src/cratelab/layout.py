"""The run-folder contract: the name of every file that train, eval, interpret and ablate write, and the
columns of the sweep's result tables. Writers and readers (and the tests' synthetic folders) take the
names from here, so a renamed file or column cannot drift between them.

A training run folder (`cratelab train`, checkpoint.py, evaluate.py)::

    ckpt.pt  config.toml  data.json  metrics.jsonl  eval.json  tensorboard/
    track/step{N}/ckpt.pt  (train(keep_steps=...): the model as it was at step N, without optimizer state)

An interpret folder (`cratelab interpret`, cratelab.interp)::

    run.json  config.toml  records/layer{l}/  scores.jsonl  simulations.jsonl  scores.csv
    summary.json  summary.md  cards/index.html

A sweep folder (`cratelab ablate`, cratelab.sweep, cratelab.report)::

    sweep.toml  runs/<name>/ (a training run folder + interp/ + log.txt + result.json; an SAE arm's: sweep/sae_arm.py)
    results.csv  results_layers.csv  results_track.csv  report.md  report.html  plots/
    jobs/<job id>/ (sweep.launcher slurm or submitit-local: submitit's job scripts, pickles and logs)

A tracked point of a sweep run (`sweep.track`), evaluated and scored as the run itself is::

    runs/<name>/track/step{N}/  ckpt.pt  config.toml  eval.json  interp/  result.json

An SAE folder (`cratelab sae`, cratelab.sae; an SAE arm's run holds one per layer under sae/layer{l}/)::

    sae.json  sae_weights.safetensors  cfg.json  metrics.jsonl  eval.json  state/position.json

The data cache (`cratelab prepare`, cratelab.data): the default corpus (`corpus-<code>/`: manifest.json,
<source>.jsonl, LICENSES.md), a Hugging Face dataset's documents (documents.jsonl, documents.sha256) and each
tokenized dataset (`datasets/<key>/`: meta.json, tokenizer.json, train.bin, val.bin).
"""

from __future__ import annotations

from pathlib import Path

# ---- format tags: what each kind of file records as its "format" (a reader refuses another)
CHECKPOINT_FORMAT = "cratelab-checkpoint"  # ckpt.pt, with checkpoint.VERSION
RECORDS_FORMAT = "cratelab-neuron-records-1"  # records/layer{l}/records.json
INTERPRET_FORMAT = "cratelab-interpret-1"  # an interpret folder's run.json and summary.json
SAE_FORMAT = "cratelab-sae-1"  # an SAE folder's sae.json
DATASET_FORMAT = 1  # a tokenized dataset's meta.json (data.shards.BUILDER, in its cache key, changes with it)


def layer_folder(parent: str | Path, layer: int) -> Path:
    """A layer's folder: records/layer{l}/, cards/layer{l}/, an SAE arm's sae/layer{l}/ and interp/layer{l}/."""
    return Path(parent) / f"layer{layer}"


# ---- a training run folder
CHECKPOINT = "ckpt.pt"
CONFIG = "config.toml"  # also in an interpret folder: the run config with the [interp] section used
DATA = "data.json"  # the data the run is trained and evaluated on (data.shards.run_data_identity)
METRICS = "metrics.jsonl"  # one JSON line per evaluation during training
# metrics.jsonl: a line of a cooldown branch (train.schedule = "wsd", a tracked point) names the step it branched from
COOLDOWN_START = "cooldown_start"
EVAL = "eval.json"
TENSORBOARD = "tensorboard"
TRACK = "track"  # track/step{N}/: the checkpoints kept along training (track_folder)

# ---- an interpret folder
INTERP_RUN = "run.json"  # what the folder was made from (checkpoint and data hashes, settings)
RECORDS = "records"
RECORDS_META = "meta.json"  # in records/layer{l}/: written last, so its presence means the layer is complete
RECORDS_ARRAYS = "records.safetensors"  # in records/layer{l}/: the records' arrays
RECORDS_JSON = "records.json"  # in records/layer{l}/: their metadata, vocabulary and hashes
SCORES = "scores.jsonl"
SIMULATIONS = "simulations.jsonl"
SCORES_CSV = "scores.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CARDS = "cards"
CARDS_INDEX = "index.html"


def card_page(neuron: int) -> str:
    """A neuron's card, in cards/layer{l}/."""
    return f"neuron{neuron}.html"


# ---- a sweep folder
SWEEP_CONFIG = "sweep.toml"
RUNS = "runs"
RUN_INTERP = "interp"  # runs/<name>/interp/: the run's interpret folder
RUN_LOG = "log.txt"
RUN_RESULT = "result.json"  # written last: its presence means the run is finished
RESULTS = "results.csv"
RESULTS_LAYERS = "results_layers.csv"
RESULTS_TRACK = "results_track.csv"
# the decided answers of the sweep's declared questions, one row per (family, effect, metric, test): the contract
# other tools read (docs/statistics.md); the first 13 columns are the contract's, the rest explain them
ANSWERS = "answers.csv"
ANSWER_COLUMNS = ["family", "effect", "metric", "test", "margin", "estimate", "ci_low", "ci_high", "p_adjusted",
                  "decision", "seeds_needed", "n_seeds", "tokens", "seeds_needed_sd_upper", "margin_reachable",
                  "ci_level", "p_value", "note"]
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS = "plots"
JOBS = "jobs"
ARM_SAES = "sae"  # runs/<arm>-s<seed>/sae/layer{l}/: an SAE arm's SAEs (interp/layer{l}/: their features scored)

# ---- an SAE folder (metrics.jsonl and eval.json as a training run's: METRICS, EVAL)
SAE_JSON = "sae.json"  # what the SAE was trained on and with, and WEIGHTS_SHA256
SAELENS_FILES = ("sae_weights.safetensors", "cfg.json")  # SAELens's names; cfg.json written last
SAE_STATE = "state"  # state/: the trainer's state while it trains (resume)
SAE_POSITION = "position.json"  # in state/: the activation buffer's position

# ---- the data cache
CORPUS_MANIFEST = "manifest.json"  # the default corpus' folder: written last, so its presence means it is built
CORPUS_LICENSES = "LICENSES.md"
HF_DOCUMENTS = "documents.jsonl"  # a Hugging Face dataset's documents
HF_DOCUMENTS_SHA256 = "documents.sha256"  # their checksum, written last
DATASET_META = "meta.json"  # a tokenized dataset's description: written last
DATASET_TOKENIZER = "tokenizer.json"


def corpus_source_file(source: str) -> str:
    """The documents of one source of the default corpus."""
    return f"{source}.jsonl"


def split_tokens_file(split: str) -> str:
    """A tokenized split's token ids (a flat array of the dataset's dtype)."""
    return f"{split}.bin"


def run_folder(sweep_dir: str | Path, name: str) -> Path:
    return Path(sweep_dir) / RUNS / name


def track_folder(run_dir: str | Path, step: int) -> Path:
    """The folder of the checkpoint a run kept at ``step`` (and, in a sweep, of its evaluation and scores)."""
    return Path(run_dir) / TRACK / f"step{step}"


# ---- the result columns
# the scoring protocols' names (interp/protocols.py defines each), in the order of the columns
PROTOCOLS = ("top-and-random", "random-only", "anthropic")


def interp_column(protocol: str) -> str:
    """A protocol's interpretability column: the mean score over neurons (layer) or over layers (run)."""
    return "interp_" + protocol.replace("-", "_")


def unscorable_column(protocol: str) -> str:
    """A protocol's count of the layer's unscorable units (neurons or SAE features) in results_layers.csv."""
    return "unscorable_" + protocol.replace("-", "_")


# results.csv: the run's unscorable scores, summed over its layers and protocols (a unit unscorable under two
# protocols counts twice)
UNSCORABLE = "unscorable_scores"
SPARSITY_COLUMNS = ["zero_frac", "l0", "l0_frac", "dead_frac", "dense_frac"]
# an SAE arm's (sweep/sae_arm.py; empty for other runs): losses clean, with the SAE spliced in and zero-ablated,
# fraction of variance unexplained, loss recovered, and the SAE's width
SAE_COLUMNS = ["sae_clean_loss", "sae_spliced_loss", "sae_zero_loss", "sae_fvu", "sae_loss_recovered", "sae_d"]
RESULT_METRIC_COLUMNS = ["params", "tokens", "train_s", "val_loss", "bpb", *SPARSITY_COLUMNS,
                         *map(interp_column, PROTOCOLS), UNSCORABLE, *SAE_COLUMNS]
LAYER_METRIC_COLUMNS = ["layer", *SPARSITY_COLUMNS, "dictionary_norm", *map(interp_column, PROTOCOLS),
                        *map(unscorable_column, PROTOCOLS), *SAE_COLUMNS]


def condition_columns(varied: list[str]) -> list[str]:
    """Which run a row is, the key of both tables: its name, its condition, the value of each field the
    sweep varies (a "section.key" column each), and its seed."""
    return ["name", "condition", *varied, "seed"]


def result_columns(varied: list[str]) -> list[str]:
    """results.csv: one row per run."""
    return [*condition_columns(varied), *RESULT_METRIC_COLUMNS]


def track_columns(varied: list[str]) -> list[str]:
    """results_track.csv: one row per run and tracked point (the final point, track = 1.0, included): the
    fraction of train.max_steps, the step, and the columns of results.csv measured on that checkpoint."""
    return [*condition_columns(varied), "track", "step", *RESULT_METRIC_COLUMNS]


def layer_columns(varied: list[str]) -> list[str]:
    """results_layers.csv: one row per run and layer."""
    return [*condition_columns(varied), *LAYER_METRIC_COLUMNS]
