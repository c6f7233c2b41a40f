import pytest

from cratelab.config import ConfigError, RunConfig, apply_overrides, config_from_dict, dump_toml, load_config


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
