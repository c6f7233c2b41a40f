"""Neuron interpretability: records, explainers, simulators and the paper's scoring protocols.

Data flows one way: activations -> RecordBuilder -> LayerRecords -> NeuronRecord -> explanation
-> simulation -> pooled correlation -> layer summary.

    from cratelab.interp import score_activations
    results = score_activations(tokens, activations, protocol="top-and-random", seed=0)
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import CratelabError
from .activations import ActivationRecord, LayerRecords, NeuronRecord, Windows
from .config import METHODS, TOP_MODES, BackendConfig, InterpConfig, RecordConfig
from .explain import (Explainer, NeuronFailure, TokenPattern, TokenPatternExplainer, TokenPatterns, explainer_view,
                      fit_token_patterns, neuron_deadline)
from .llm import EndpointConfig, endpoint_backend
from .local_llm import local_backend
from .prompts import PromptTemplates
from .protocols import ANTHROPIC, PROTOCOLS, TOP_AND_RANDOM, ScoringProtocol, get_protocol, random_only
from .sampling import RecordBuilder
from .score import ROW_FIELDS, LayerSummary, NeuronScore, pooled_correlation, score_neuron, summarize_layer
from .simulate import Simulator, TokenPatternSimulator


def make_backend(method: str, backend: BackendConfig | None = None, **options: Any) -> tuple[Explainer, Simulator]:
    """The explainer and simulator of an explanation method.

    token-pattern: offline, deterministic (options: TokenPatternExplainer's fields).
    local:PATH: a transformers model directory or .gguf file (options: BackendConfig's fields, e.g. device,
    dtype, max_explanation_tokens).
    openai:MODEL: an OpenAI-compatible endpoint, by default from $OPENAI_BASE_URL and $OPENAI_API_KEY
    (options: EndpointConfig's fields, e.g. base_url, cache_dir, max_concurrency).
    backend: the [interp.backend] settings of the LLM methods (models, prompt templates, endpoint);
    options given here take precedence over them. Its neuron_deadline_s is the run's to apply, around
    each neuron (`with neuron_deadline(seconds):`).
    """
    kind, _, target = method.partition(":")
    if method == "token-pattern":
        return TokenPatternExplainer(**_options(method, TokenPatternExplainer, options)), TokenPatternSimulator()
    if kind not in ("local", "openai") or not target:
        raise CratelabError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    settings = backend if backend is not None else BackendConfig()
    prompts = PromptTemplates.load(settings.explainer_prompt, settings.simulator_prompt)
    explainer_model, simulator_model = settings.explainer_model or target, settings.simulator_model or target
    if kind == "local":
        settings = replace(settings, **_options(method, BackendConfig, options))
        InterpConfig(method=method, backend=settings).validate()  # e.g. simulation 'json' has no local meaning
        return local_backend(explainer_model, settings, simulator_path=simulator_model, prompts=prompts)
    defaults = dict(explainer_model=explainer_model, simulator_model=simulator_model, prompts=prompts,
                    base_url=settings.base_url or None, api_key_env=settings.api_key_env,
                    simulation=settings.simulation, max_concurrency=settings.concurrency,
                    timeout_s=settings.timeout_s, max_attempts=settings.retries + 1,
                    max_explanation_tokens=settings.max_explanation_tokens)
    return endpoint_backend(EndpointConfig(**{**defaults, **_options(method, EndpointConfig, options)}))


def check_backend(method: str, backend: BackendConfig) -> None:
    """What make_backend would refuse, found without loading a model or asking a server: a local model's
    files and packages, an endpoint's URL and key (a run checks this before it builds any records)."""
    kind, _, target = method.partition(":")
    if kind == "local":
        from .local_llm import check_model_path

        for path in {backend.explainer_model or target, backend.simulator_model or target}:
            check_model_path(path)
    elif kind == "openai":
        make_backend(method, backend)  # the endpoint's client checks its URL and key; it sends nothing


def _options(method: str, config: type, options: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(config)}
    if unknown := sorted(set(options) - known):
        raise CratelabError(f"unknown option(s) {', '.join(unknown)} for {method!r}; "
                            f"known: {', '.join(sorted(known)) or 'none'}")
    return options


def build_records(tokens: Sequence[Sequence[str]], activations: np.ndarray | torch.Tensor, *, seed: int = 0,
                  layer: int = 0, eot_token: str | None = None, config: RecordConfig = RecordConfig()) -> LayerRecords:
    """Records of N sequences of T token strings with activations (N, T, H), through the streaming builder
    (both of its passes)."""
    vocab = list(dict.fromkeys(t for seq in tokens for t in seq))  # ids in order of first appearance
    index = {t: i for i, t in enumerate(vocab)}
    ids = np.array([[index[t] for t in seq] for seq in tokens], dtype=np.int64)
    acts = torch.as_tensor(activations)
    if ids.ndim != 2 or acts.ndim != 3 or tuple(acts.shape[:2]) != ids.shape:
        raise CratelabError(f"expected N sequences of T tokens and activations (N, T, H), "
                            f"got tokens {ids.shape} and activations {tuple(acts.shape)}")
    builder = RecordBuilder(acts.shape[2], vocab, eot_id=index.get(eot_token) if eot_token is not None else None,
                            layer=layer, seed=seed, config=config)
    builder.add(ids, acts)
    if builder.second_pass:  # exact quantile bins
        builder.count(ids, acts)
    return builder.finish()


def score_records(records: LayerRecords, protocol: str | ScoringProtocol = "top-and-random", *,
                  explainer: Explainer, simulator: Simulator,
                  neurons: Sequence[int] | None = None) -> list[NeuronScore]:
    """Score every neuron (or the given ones) of a layer's records under one protocol."""
    proto = get_protocol(protocol)
    chosen = range(records.n_neurons) if neurons is None else neurons
    return [score_neuron(records.neuron(h), proto, explainer, simulator) for h in chosen]


def score_activations(tokens: Sequence[Sequence[str]], activations: np.ndarray | torch.Tensor, *,
                      method: str = "token-pattern", protocol: str | ScoringProtocol = "top-and-random",
                      seed: int = 0, layer: int = 0, eot_token: str | None = None,
                      config: RecordConfig = RecordConfig()) -> list[NeuronScore]:
    """Explain, simulate and score every neuron of any activation matrix; one NeuronScore per neuron.

    tokens: N sequences of T token strings (each one model context); activations: (N, T, H).
    eot_token: the end-of-text string that separates documents inside a sequence, if any.
    Same inputs and seed, same results.
    """
    records = build_records(tokens, activations, seed=seed, layer=layer, eot_token=eot_token, config=config)
    explainer, simulator = make_backend(method)
    return score_records(records, protocol, explainer=explainer, simulator=simulator)


__all__ = [
    "ANTHROPIC", "METHODS", "PROTOCOLS", "ROW_FIELDS", "TOP_AND_RANDOM", "TOP_MODES",
    "ActivationRecord", "BackendConfig", "EndpointConfig", "Explainer", "LayerRecords", "LayerSummary",
    "NeuronFailure", "NeuronRecord", "NeuronScore", "PromptTemplates",
    "RecordBuilder", "RecordConfig", "ScoringProtocol", "Simulator", "TokenPattern", "TokenPatternExplainer",
    "TokenPatternSimulator", "TokenPatterns", "Windows",
    "build_records", "check_backend", "explainer_view", "fit_token_patterns", "get_protocol", "make_backend",
    "neuron_deadline",
    "pooled_correlation", "random_only", "score_activations", "score_neuron", "score_records",
    "summarize_layer",
]
