import copy
import dataclasses
import functools
import re
import typing
from typing import Any

import pytest

from cratelab.config import (ConfigError, RunConfig, SweepConfig, apply_overrides, changed_settings, config_from_dict,
                             dump_toml, execution_settings, flat_settings, load_config)
from cratelab.errors import CratelabError
from cratelab.interp.config import InterpConfig
from cratelab.sae.config import SAEConfig
from cratelab.sae.train import SAE_RESUMABLE_CHANGES
from cratelab.sweep.results import check_sweep_unchanged, save_sweep
from cratelab.train import check_same_run


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.model.ista_lambda == 0.1 and cfg.model.ista_step_size == 0.1 and cfg.model.ista_steps == 2
    assert cfg.model.overcomplete == 4 and cfg.model.mlp_act == "relu" and cfg.model.qkv == "shared"


@pytest.mark.parametrize("section,key,value,field", [
    ("model", "n_embd", 130, "model.n_embd"),  # not divisible by n_head=4
    ("model", "ista_lambda", -0.1, "model.ista_lambda"),
    ("model", "ista_step_size", -1.0, "model.ista_step_size"),
    ("model", "ista_step_size", 0.0, "model.ista_step_size"),
    ("model", "ista_steps", 0, "model.ista_steps"),
    ("model", "arch", "lstm", "model.arch"),
    ("model", "qkv", "tied", "model.qkv"),
    ("model", "mlp_act", "swish", "model.mlp_act"),
    ("model", "dropout", 1.0, "model.dropout"),
    ("model", "n_layer", 0, "model.n_layer"),
    ("train", "lr", 0.0, "train.lr"),
    ("train", "min_lr", 1.0, "train.min_lr"),
    ("train", "device", "tpu", "train.device"),
    ("train", "device", "cuda:x", "train.device"),
    ("interp", "device", "cuda:", "interp.device"),
    ("train", "dtype", "int8", "train.dtype"),
    ("data", "tokenizer", "words", "data.tokenizer"),
    ("data", "val_fraction", 0.0, "data.val_fraction"),
    ("eval", "tokens", 0, "eval.tokens"),
])
def test_bad_values_name_the_field(section, key, value, field):
    with pytest.raises(ConfigError) as err:
        config_from_dict({section: {key: value}})
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_unknown_keys_and_sections_are_rejected():
    with pytest.raises(ConfigError, match="model.n_layers: unknown key"):
        config_from_dict({"model": {"n_layers": 2}})
    with pytest.raises(ConfigError, match="optim: unknown section"):
        config_from_dict({"optim": {}})


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="model.n_layer: expected int, got str"):
        config_from_dict({"model": {"n_layer": "two"}})
    with pytest.raises(ConfigError, match="train.compile: expected bool"):
        config_from_dict({"train": {"compile": 1}})
    assert config_from_dict({"model": {"ista_lambda": 1}}).model.ista_lambda == 1.0  # int is a fine float


def test_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\narch = "crate"\nn_layer = 2\n')
    cfg = load_config(path, ["model.arch=gpt", "model.n_layer=3", "model.ista_lambda=0.2", 'data.corpus="fixture"',
                             "train.compile=true"])
    assert (cfg.model.arch, cfg.model.n_layer, cfg.model.ista_lambda) == ("gpt", 3, 0.2)
    assert cfg.data.corpus == "fixture" and cfg.train.compile is True


@pytest.mark.parametrize("override,match", [
    ("model.n_layer", "expected section.key=value"),
    ("n_layer=3", "expected section.key=value"),
    ("model.n_layer=three", "model.n_layer: expected int"),
    ("model.nope=1", "model.nope: unknown key"),
])
def test_malformed_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_toml_round_trip(tmp_path):
    cfg = load_config(None, ["model.arch=gpt", "train.max_steps=7"])
    path = tmp_path / "saved.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path) == cfg
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    assert isinstance(RunConfig().to_dict()["model"], dict)


def test_a_config_error_is_a_cratelab_error_and_set_applies_after_smoke():
    from cratelab.config import SweepConfig, load_sweep_config
    from cratelab.errors import CratelabError

    assert issubclass(ConfigError, CratelabError)
    base, sweep = load_sweep_config("configs/seed-ablation.toml", ["sweep.workers=1"], smoke=True)
    assert base.data.corpus == "fixture" and sweep.seeds == [0, 1] and sweep.workers == 1
    assert sweep.reference_levels() == {"model.ista_lambda": 0.1, "model.qkv": "shared"}
    assert SweepConfig(factors={"train.lr": [0.1, 0.2]}).reference_levels() == {"train.lr": 0.1}


def test_interp_records_and_backend_are_nested_tables(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[interp]\nmethod = "openai:m"\n[interp.records]\nwindow = 32\nn_top = 40\n'
                    '[interp.backend]\nexplainer_model = "mistral"\nsimulation = "json"\n')
    cfg = load_config(path, ["interp.records.short_window=4", "interp.backend.simulator_model=llama",
                             "interp.backend.timeout_s=30"])
    assert (cfg.interp.records.window, cfg.interp.records.short_window, cfg.interp.records.n_top) == (32, 4, 40)
    b = cfg.interp.backend
    assert (b.explainer_model, b.simulator_model, b.simulation, b.timeout_s) == ("mistral", "llama", "json", 30.0)
    again = tmp_path / "again.toml"
    again.write_text(dump_toml(cfg))
    assert "[interp.records]" in again.read_text() and load_config(again) == cfg


@pytest.mark.parametrize("override,message", [
    ("interp.records.colour=1", "interp.records.colour: unknown key"),
    ("interp.records.window=0", "interp.records.window: must be >= 1"),
    ("interp.records.snippet=9", "interp.records.snippet: must be <= interp.records.short_window"),
    ("interp.records.window=x", "interp.records.window: expected int"),
    ("interp.backend.simulation=guess", "interp.backend.simulation: must be one of 'auto', 'logprobs', 'json'"),
    ("interp.backend.concurrency=0", "interp.backend.concurrency: must be >= 1"),
    ("interp.backend.retries=-1", "interp.backend.retries: must be >= 0"),
    ("interp.backend.base_url=ftp://x", "interp.backend.base_url: must be http(s)"),
    ("interp.backend.simulator_prompt=/nonexistent/p.txt", "interp.backend.simulator_prompt: no prompt template"),
    ("interp.window=16", "interp.window: unknown key"),  # the record keys moved to [interp.records]
])
def test_bad_nested_interp_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_config_errors_are_cratelab_errors():
    from cratelab.errors import CratelabError

    assert issubclass(ConfigError, CratelabError)


def test_seeds_that_torch_would_train_as_another_seed_are_refused():
    """Issue 27: seed 2^32 trained the weights of seed 0. torch's CPU generator (model init, dropout, the training
    batches) keeps a seed's low 32 bits, so every seed of [0, 2^32) gives its own stream and nothing above does."""
    import torch

    from cratelab.config import MAX_SEED, load_sweep_config

    def draws(seed):
        return torch.randint(0, 2**31, (4,), generator=torch.Generator().manual_seed(seed)).tolist()

    assert draws(2**32) == draws(0) and draws(MAX_SEED) != draws(0)  # why the bound
    assert load_config(None, [f"train.seed={MAX_SEED}"]).train.seed == MAX_SEED
    for override in ("train.seed=4294967296", "sweep.seeds=[0, 4294967296]"):
        with pytest.raises(ConfigError, match=r"seeds?: must be in \[0, 4294967295\] \(2\^32 - 1\), got 4294967296: "
                                              r"torch keeps the low 32 bits of a seed, so it would train as seed 0"):
            load_sweep_config(None, [override])


def test_a_config_file_starting_with_a_byte_order_mark_is_read(tmp_path):
    """Issue 27: a UTF-8 BOM (Windows editors write one) gave "invalid TOML: Invalid statement"."""
    from cratelab.config import load_sweep_config
    from cratelab.sae import load_sae_config

    path, sae = tmp_path / "sweep.toml", tmp_path / "sae.toml"
    path.write_bytes(b"\xef\xbb\xbf[model]\nn_layer = 3\n[sweep]\nseeds = [4]\n")
    sae.write_bytes(b"\xef\xbb\xbf[sae]\ntokens = 8192\n")
    base, sweep = load_sweep_config(path)  # every config is read by config.read_toml: run, sweep, sae
    assert (base.model.n_layer, sweep.seeds, load_sae_config(sae).tokens) == (3, [4], 8192)


@pytest.mark.parametrize("text", [
    '"model.ista_lambda" = [0.1, 0.2]\nmodel.ista_lambda = [0.4]\n',
    '"model.ista_lambda" = [0.1, 0.2]\n[sweep.factors.model]\nista_lambda = [0.4]\n',
])
def test_a_factor_written_twice_is_refused(tmp_path, text):
    """Issue 27: a factor given as a quoted "section.key" and as a dotted key (or a table) kept one list."""
    from cratelab.config import load_sweep_config

    path = tmp_path / "sweep.toml"
    path.write_text("[sweep.factors]\n" + text)
    with pytest.raises(ConfigError, match=r"sweep.factors.model.ista_lambda: given twice: as a quoted "):
        load_sweep_config(path)


@pytest.mark.parametrize("override, field", [
    ('sweep.slurm.extra=["--qos=high\\n#SBATCH --mem=1T"]', "sweep.slurm.extra[0]"),
    ('sweep.slurm.extra=["--comment=a\\rb"]', "sweep.slurm.extra[0]"),
    ('sweep.slurm.setup=["module load cuda", "echo ok\\rrm -rf ~"]', "sweep.slurm.setup[1]"),
    ('sweep.slurm.setup=["module load cuda\\nrm -rf ~"]', "sweep.slurm.setup[0]"),
    ('sweep.slurm.partition="gpu\\u0000"', "sweep.slurm.partition"),
    ('sweep.slurm.account="lab\\u001b[2J"', "sweep.slurm.account"),
])
def test_slurm_options_with_control_characters_are_refused(override, field):
    """Issue 27: each option becomes a line of the sbatch script; a newline in a value would add lines to it."""
    from cratelab.config import load_sweep_config

    with pytest.raises(ConfigError, match="must not hold control characters") as err:
        load_sweep_config(None, [override])
    assert err.value.field == field


@pytest.mark.parametrize("override, message", [
    ("interp.layers=3", "interp.layers: expected a string: 'all' or a comma list of layer indices such as '0,2', "
                        "got int 3: write it in quotes, layers = \"3\""),
    ("interp.layers=[0, 2]", "got list [0, 2]: write it in quotes, layers = \"0,2\""),
    ("interp.protocols=['anthropic']", "interp.protocols: expected a string: a comma list of protocols"),
])
def test_a_wrong_typed_string_setting_says_what_to_write(override, message):
    """Issue 27: `interp.layers = 3` said only "expected str"."""
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)



# ---------------------------------------------------------------- one run identity: what each command may resume with

# the execution settings as the commands listed them before the field metadata did: each command accepts exactly
# these (and its own few, below) and refuses a change of any other field
INTERP_EXECUTION = {"device", "batch_size", "workers", "threads", "bootstrap", "confidence", "cards", "max_cards",
                    "backend.base_url", "backend.api_key_env", "backend.concurrency", "backend.timeout_s",
                    "backend.retries", "backend.neuron_deadline_s", "backend.device"}
RUN_EXECUTION = {"train.device", "train.threads", "train.compile", "train.log", "train.wandb_project",
                 "data.cache_dir", "eval.dense_threshold", *("interp." + name for name in INTERP_EXECUTION)}
TRAIN_ACCEPTS = RUN_EXECUTION | {"train.max_steps", "train.eval_interval", "interp"}
SWEEP_ACCEPTS = RUN_EXECUTION | {"sweep.workers", "sweep.launcher", "sweep.slurm", "sweep.seeds", "sweep.factors",
                                 "sweep.questions"}
SAE_ACCEPTS = {"device", "threads", "eval_tokens"}


def test_the_field_metadata_marks_the_execution_settings_each_command_accepted():
    assert execution_settings(InterpConfig) == INTERP_EXECUTION
    assert execution_settings(RunConfig) == RUN_EXECUTION
    assert execution_settings(SweepConfig, "sweep.") == {"sweep.workers", "sweep.launcher", "sweep.slurm"}
    assert SAE_RESUMABLE_CHANGES == SAE_ACCEPTS


def _changed(values: dict[str, Any], name: str) -> dict[str, Any]:
    """A copy of nested config values with the dotted field `name` given another value of its type."""
    values = copy.deepcopy(values)
    *sections, leaf = name.split(".")
    target = functools.reduce(dict.__getitem__, sections, values)
    value = target[leaf]
    if isinstance(value, bool):
        target[leaf] = not value
    elif isinstance(value, (int, float, str)):
        target[leaf] = value + (1 if not isinstance(value, str) else "x")
    elif leaf == "arms":
        target[leaf] = [*value, {"name": "gpt", "set": {"model.arch": "gpt"}}]
    else:
        target[leaf] = [*value, value[-1] + 1 if value else "x"]
    return values


def _unchecked(cls: type, values: dict[str, Any]) -> Any:
    """A config dataclass holding these values, not validated (a changed value need not be valid to compare)."""
    built = object.__new__(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = values[f.name]
        object.__setattr__(built, f.name, _unchecked(hints[f.name], value)
                           if dataclasses.is_dataclass(hints[f.name]) else value)
    return built


def _accepted(name: str, accepted: set[str]) -> bool:
    return any(name == ok or name.startswith(ok + ".") for ok in accepted)


class _Tokenizer:
    def to_dict(self) -> dict[str, str]:
        return {"name": "bpe"}


@pytest.mark.parametrize("name", sorted(flat_settings(RunConfig().to_dict())))
def test_a_resumed_run_refuses_every_field_but_the_execution_settings_max_steps_eval_interval_and_interp(
        name, tmp_path):
    state = {"train": {}, "config": RunConfig().to_dict(), "tokenizer": _Tokenizer().to_dict()}
    resumed = _unchecked(RunConfig, _changed(RunConfig().to_dict(), name))
    if _accepted(name, TRAIN_ACCEPTS):
        check_same_run(state, resumed, _Tokenizer(), tmp_path / "ckpt.pt")
    else:
        with pytest.raises(CratelabError, match=f"different run \\({re.escape(name)} "):
            check_same_run(state, resumed, _Tokenizer(), tmp_path / "ckpt.pt")


SWEEP_VALUES = RunConfig().to_dict() | {"sweep": SweepConfig().to_dict()}


@pytest.mark.parametrize("name", sorted(flat_settings(SWEEP_VALUES)))
def test_a_rerun_sweep_refuses_every_field_but_the_execution_settings_seeds_levels_and_questions(name, tmp_path):
    save_sweep(RunConfig(), SweepConfig(), tmp_path)
    values = _changed(SWEEP_VALUES, name)
    sweep = _unchecked(SweepConfig, values.pop("sweep"))
    if _accepted(name, SWEEP_ACCEPTS):
        check_sweep_unchanged(_unchecked(RunConfig, values), sweep, tmp_path)
    else:
        with pytest.raises(CratelabError, match=f"other settings \\({re.escape(name)} "):
            check_sweep_unchanged(_unchecked(RunConfig, values), sweep, tmp_path)


@pytest.mark.parametrize("name", sorted(SAEConfig().to_dict()))
def test_a_resumed_sae_refuses_every_field_but_its_execution_settings_and_eval_tokens(name):
    identity = [{key: value for key, value in settings.items() if key not in SAE_RESUMABLE_CHANGES}
                for settings in (SAEConfig().to_dict(), _changed(SAEConfig().to_dict(), name))]
    assert bool(changed_settings(*identity)) == (name not in SAE_ACCEPTS)
