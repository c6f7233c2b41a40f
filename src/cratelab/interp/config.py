"""`[interp]`: which neurons `cratelab interpret` explains and scores, how, and on which records, with its nested
[interp.records] and [interp.backend] sections; typed and validated like every section (validate.py).

Imports only the bottom of the project (validate.py) and the protocols' data (protocols.py), so that config.py
(RunConfig holds an InterpConfig) imports it without a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..validate import choose, require, require_device, setting
from .protocols import PROTOCOLS

# the explanation methods (make_backend): names, and patterns whose MODEL or PATH is any non-empty text
METHODS = ("token-pattern", "local:PATH", "openai:MODEL")
LAYERS_FORMAT = "'all' or a comma list of layer indices such as '0,2'"  # InterpConfig.layers
PROTOCOLS_FORMAT = "a comma list of protocols such as 'top-and-random,anthropic'"  # InterpConfig.protocols
TOP_MODES = ("distinct", "paper")  # RecordConfig.top
QUANTILE_MODES = ("exact", "sample")  # RecordConfig.quantiles


@dataclass(frozen=True)
class RecordConfig:
    """`[interp.records]`: tokens per record, and how many records of each kind a neuron keeps."""

    window: int = setting(64, "tokens per record in the OpenAI protocols")
    short_window: int = setting(8, "tokens per record in the Anthropic-style protocol")
    snippet: int = setting(3, "tokens per out-of-context snippet")
    n_top: int = setting(50, "top-activating records per neuron")
    n_random: int = setting(50, "random records per neuron")
    n_bins: int = setting(11, "quantile bins of the activations")
    per_bin: int = setting(4, "quantile samples per bin: 2 to explain + 2 to score")
    top: str = setting("distinct", '"distinct": non-overlapping top windows; "paper": the top tokens, overlaps allowed')
    quantiles: str = setting("exact", '"exact": a second pass over the stream counts every activation, so that '
                                      "quantile records come from their true bins; \"sample\": one pass, the bins' "
                                      "ranks estimated from a sample of 4,096 positions (faster)")

    def __post_init__(self) -> None:  # checked however it is built: TOML, --set, or Python
        self.validate()

    def validate(self, prefix: str = "interp.records") -> None:
        p = prefix + "."
        for name in ("window", "short_window", "snippet", "n_top", "n_bins", "per_bin"):
            require(getattr(self, name) >= 1, p + name, f"must be >= 1, got {getattr(self, name)}")
        require(self.n_random >= 0, p + "n_random", f"must be >= 0, got {self.n_random}")
        require(self.window >= self.short_window, p + "short_window",
                f"must be <= {p}window ({self.window}), got {self.short_window}")
        choose(self.top, TOP_MODES, p + "top")
        choose(self.quantiles, QUANTILE_MODES, p + "quantiles")
        require(self.short_window >= self.snippet, p + "snippet",
                f"must be <= {p}short_window ({self.short_window}), got {self.snippet}")


SIMULATION_METHODS = ("auto", "logprobs", "json")  # BackendConfig.simulation
LOCAL_DTYPES = ("float32", "bfloat16", "float16")  # BackendConfig.dtype


@dataclass
class BackendConfig:
    """`[interp.backend]`: the LLM explainer and simulator of the methods local:PATH and openai:MODEL. The
    endpoint's options are execution settings: they reach the same answers (the response cache keys on what
    determines them)."""

    explainer_model: str = setting("", '"": the model of interp.method')
    simulator_model: str = setting("", '"": the model of interp.method (the paper simulated with another model)')
    explainer_prompt: str = setting("", 'a prompt template file (docs/interpretability.md); "": the built-in prompt')
    simulator_prompt: str = setting("", 'a prompt template file for logprob simulation; "": the built-in prompt')
    simulation: str = setting("auto", '"auto" (decided once per run by a probe) | "logprobs" | "json"')
    base_url: str = setting("", "openai: \"\" = $OPENAI_BASE_URL, else OpenAI's API", execution=True)
    api_key_env: str = setting("OPENAI_API_KEY", "the NAME of the variable holding the key: keys "
                                                 "stay out of configs", execution=True)
    concurrency: int = setting(8, "requests in flight at once", execution=True)
    timeout_s: float = setting(120.0, "socket timeout of one request", execution=True)
    retries: int = setting(3, "further attempts after a timeout, connection error, 408, 429, 5xx or "
                              "malformed answer", execution=True)
    neuron_deadline_s: float = setting(600.0, "openai: seconds a neuron's requests may take in all "
                                              "(every protocol, waits for a free slot included); "
                                              "then it fails with a transport reason and the run "
                                              "goes on. 0 = no deadline", execution=True)
    max_explanation_tokens: int = setting(60, "the explainer's answer is cut at this many tokens; only its first "
                                              "line is used (at 40, SmolLM2's explanations were cut mid-sentence)")
    device: str = setting("auto", 'local: where the model runs ("auto": cuda when available, else cpu)', execution=True)
    dtype: str = setting("float32", "local: the precision the weights are expanded to (a .gguf file is "
                                    "dequantised: float32 takes 4 bytes a weight, whatever the file's size); "
                                    "float32 on CPU (no fast half precision there); bfloat16 halves GPU memory")

    def validate(self, prefix: str = "interp.backend") -> None:
        p = prefix + "."
        choose(self.simulation, SIMULATION_METHODS, p + "simulation")
        choose(self.dtype, LOCAL_DTYPES, p + "dtype")
        require_device(self.device, p + "device")
        require(self.max_explanation_tokens >= 1, p + "max_explanation_tokens",
                f"must be >= 1, got {self.max_explanation_tokens}")
        require(self.concurrency >= 1, p + "concurrency", f"must be >= 1, got {self.concurrency}")
        require(self.retries >= 0, p + "retries", f"must be >= 0, got {self.retries}")
        require(self.timeout_s > 0, p + "timeout_s", f"must be > 0, got {self.timeout_s}")
        require(self.neuron_deadline_s >= 0, p + "neuron_deadline_s",
                f"must be >= 0 (0 = no deadline), got {self.neuron_deadline_s}")
        require(bool(self.api_key_env), p + "api_key_env", "must name an environment variable")
        require(not self.base_url or self.base_url.startswith(("http://", "https://")), p + "base_url",
                f"must be http(s)://..., got {self.base_url!r}")
        for name in ("explainer_prompt", "simulator_prompt"):
            path = getattr(self, name)
            require(not path or Path(path).is_file(), p + name, f"no prompt template file at {path}")


@dataclass
class InterpConfig:
    """`cratelab interpret`: which neurons to explain and score, how, and the records they are scored on."""

    tokens: int = setting(262_144, "held-out (validation split) tokens the model reads to build the records")
    layers: str = setting("all", "the layers to interpret", format=LAYERS_FORMAT)
    neurons: int = setting(0, "neurons scored per layer: 0 = all, else a random subset drawn with `seed`")
    protocols: str = setting("top-and-random,random-only,anthropic", "the scoring protocols",
                             format=PROTOCOLS_FORMAT)
    method: str = setting("token-pattern", "explainer and simulator: one of METHODS")
    seed: int = setting(0, "record sampling and the neuron subset")
    batch_size: int = setting(16, "windows of model.block_size tokens per forward pass", execution=True)
    device: str = setting("auto", '"auto" | "cpu" | "cuda" | "cuda:N" | "mps"', execution=True)
    workers: int = setting(1, "neurons explained and scored at once (threads: worth it for LLM "
                              "backends)", execution=True)
    threads: int = setting(0, "torch intra-op threads on CPU; 0 = torch's default (1 is steadier on "
                              "a busy machine)", execution=True)
    bootstrap: int = setting(1000, "resamples of the bootstrap confidence interval over neurons", execution=True)
    confidence: float = setting(0.95, "level of the bootstrap confidence interval", execution=True)
    cards: bool = setting(True, "write HTML neuron cards (cards/index.html)", execution=True)
    max_cards: int = setting(0, "cards per layer: 0 = one per scored neuron, else the best-scoring "
                                "ones", execution=True)
    records: RecordConfig = setting(doc="[interp.records]", factory=RecordConfig)
    backend: BackendConfig = setting(doc="[interp.backend]", factory=BackendConfig)

    def layer_list(self, n_layer: int | None = None) -> list[int]:
        """The layers to interpret, given the model's number of layers (checked); without it, only the
        syntax is checked ("all" gives [])."""
        name = "interp.layers"
        if self.layers.strip() == "all":
            return list(range(n_layer or 0))
        parts = [part.strip() for part in self.layers.split(",")]
        require(all(part.isdigit() for part in parts), name,
                f"must be {LAYERS_FORMAT}, got {self.layers!r}")
        layers = [int(part) for part in parts]
        require(len(set(layers)) == len(layers), name, f"lists a layer twice: {self.layers!r}")
        if n_layer is not None:
            for layer in layers:
                require(layer < n_layer, name, f"layer {layer} out of range (the model has {n_layer} layers: "
                                              f"0 to {n_layer - 1})")
        return sorted(layers)

    def check_model(self, n_layer: int, block_size: int) -> None:
        """The model (model.n_layer, model.block_size) has the layers to interpret, and its context holds a record
        (a sweep checks this before it trains the model)."""
        if self.layers.strip() != "all":  # (a list of every layer of a typo'd n_layer could fill the memory)
            self.layer_list(n_layer)
        require(self.records.window <= block_size, "interp.records.window",  # a record lies in one context
                f"must be <= model.block_size ({block_size}), got {self.records.window}")

    def protocol_list(self) -> list[str]:
        return [part.strip() for part in self.protocols.split(",")]

    def validate(self, prefix: str = "interp") -> None:
        p = prefix + "."
        for name in ("tokens", "batch_size", "workers", "bootstrap"):
            require(getattr(self, name) >= 1, p + name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("neurons", "seed", "max_cards", "threads"):
            require(getattr(self, name) >= 0, p + name, f"must be >= 0, got {getattr(self, name)}")
        self.layer_list()
        protocols = self.protocol_list()
        for protocol in protocols:
            choose(protocol, tuple(PROTOCOLS), p + "protocols")
        require(len(set(protocols)) == len(protocols), p + "protocols", f"lists a protocol twice: {self.protocols!r}")
        # METHODS lists names ("token-pattern") and patterns ("openai:MODEL": any non-empty MODEL)
        require(any(self.method == m or (":" in m and self.method.startswith(m.split(":")[0] + ":")
                                         and len(self.method) > len(m.split(":")[0]) + 1) for m in METHODS),
                p + "method", f"must be one of {', '.join(map(repr, METHODS))}, got {self.method!r}")
        require(not (self.method.startswith("local:") and self.backend.simulation == "json"), p + "backend.simulation",
                f"'json' needs an endpoint (openai:MODEL); a local model ({self.method}) is always simulated "
                "from its digit probabilities: use 'auto' or 'logprobs'")
        require_device(self.device, p + "device")
        require(0 < self.confidence < 1, p + "confidence", f"must be in (0, 1), got {self.confidence}")
        self.records.validate(p + "records")
        self.backend.validate(p + "backend")
        for protocol in protocols:  # every chosen protocol must find the records it reads
            for name, need in PROTOCOLS[protocol].required_records().items():
                require(getattr(self.records, name) >= need, f"{p}records.{name}",
                        f"protocol {protocol!r} needs at least {need}, got {getattr(self.records, name)}")
