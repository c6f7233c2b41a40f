"""Neuron interpretability: records, explainers, simulators and the paper's scoring protocols.

Data flows one way: activations -> RecordBuilder -> LayerRecords -> NeuronRecord -> explanation
-> simulation -> pooled correlation -> layer summary.

    from cratelab.interp import score_activations
    results = score_activations(tokens, activations, protocol="top-and-random", seed=0)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import CratelabError
from .activations import ActivationRecord, LayerRecords, NeuronRecord, Windows
from .backends.endpoint import EndpointOptions
from .config import METHODS, TOP_MODES, BackendConfig, RecordConfig
from .explain import Explainer, TokenPattern, TokenPatternExplainer, TokenPatterns, explainer_view, fit_token_patterns
from .failure import NeuronFailure, neuron_deadline
from .methods import check_backend, make_backend
from .prompts import PromptTemplates
from .protocols import ANTHROPIC, PROTOCOLS, TOP_AND_RANDOM, ScoringProtocol, get_protocol, random_only
from .sampling import RecordBuilder
from .score import ROW_FIELDS, LayerSummary, NeuronScore, pooled_correlation, score_neuron, summarize_layer
from .simulate import Simulator, TokenPatternSimulator


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
    "ActivationRecord", "BackendConfig", "EndpointOptions", "Explainer", "LayerRecords", "LayerSummary",
    "NeuronFailure", "NeuronRecord", "NeuronScore", "PromptTemplates",
    "RecordBuilder", "RecordConfig", "ScoringProtocol", "Simulator", "TokenPattern", "TokenPatternExplainer",
    "TokenPatternSimulator", "TokenPatterns", "Windows",
    "build_records", "check_backend", "explainer_view", "fit_token_patterns", "get_protocol", "make_backend",
    "neuron_deadline",
    "pooled_correlation", "random_only", "score_activations", "score_neuron", "score_records",
    "summarize_layer",
]
