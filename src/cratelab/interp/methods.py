"""The explanation methods (interp.method) as an explainer and a simulator: make_backend, the one factory.

token-pattern is offline; local:PATH and openai:MODEL put the LLM explainer and simulator (llm.py) over a
backend (backends/local.py, backends/endpoint.py) configured by [interp.backend] (BackendConfig).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from ..errors import CratelabError
from .backends.endpoint import EndpointOptions
from .backends.local import check_model_path
from .config import METHODS, BackendConfig, InterpConfig
from .explain import Explainer, TokenPatternExplainer
from .llm import endpoint_backend, local_backend
from .prompts import PromptTemplates
from .simulate import Simulator, TokenPatternSimulator


def make_backend(method: str, backend: BackendConfig | None = None, **options: Any) -> tuple[Explainer, Simulator]:
    """The explainer and simulator of an explanation method.

    token-pattern: offline, deterministic (options: TokenPatternExplainer's fields).
    local:PATH: a transformers model directory or .gguf file (options: BackendConfig's fields, e.g. device,
    dtype, max_explanation_tokens).
    openai:MODEL: an OpenAI-compatible endpoint, by default from $OPENAI_BASE_URL and $OPENAI_API_KEY
    (options: BackendConfig's fields, e.g. base_url, concurrency, and EndpointOptions', e.g. cache_dir).
    backend: the [interp.backend] settings of the LLM methods (models, prompt templates, endpoint);
    options given here take precedence over them. Its neuron_deadline_s is the run's to apply, around
    each neuron (`with neuron_deadline(seconds):`).
    """
    kind, _, target = method.partition(":")
    if method == "token-pattern":
        return TokenPatternExplainer(**_options(method, (TokenPatternExplainer,), options)), TokenPatternSimulator()
    if kind not in ("local", "openai") or not target:
        raise CratelabError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    _options(method, (BackendConfig, EndpointOptions) if kind == "openai" else (BackendConfig,), options)
    in_backend = {f.name for f in fields(BackendConfig)}
    settings = replace(backend if backend is not None else BackendConfig(),
                       **{k: v for k, v in options.items() if k in in_backend})
    InterpConfig(method=method, backend=settings).validate()  # e.g. simulation 'json' has no local meaning
    prompts = PromptTemplates.load(settings.explainer_prompt, settings.simulator_prompt)
    explainer_model, simulator_model = settings.explainer_model or target, settings.simulator_model or target
    if kind == "local":
        return local_backend(explainer_model, settings, simulator_path=simulator_model, prompts=prompts)
    endpoint_options = EndpointOptions(**{k: v for k, v in options.items() if k not in in_backend})
    return endpoint_backend(settings, endpoint_options, explainer_model=explainer_model,
                            simulator_model=simulator_model, prompts=prompts)


def check_backend(method: str, backend: BackendConfig) -> None:
    """What make_backend would refuse, found without loading a model or asking a server: a local model's
    files and packages, an endpoint's URL and key (a run checks this before it builds any records)."""
    kind, _, target = method.partition(":")
    if kind == "local":
        for path in {backend.explainer_model or target, backend.simulator_model or target}:
            check_model_path(path)
    elif kind == "openai":
        make_backend(method, backend)  # the endpoint's client checks its URL and key; it sends nothing


def _options(method: str, configs: tuple[type, ...], options: dict[str, Any]) -> dict[str, Any]:
    """`options`, each a field of one of `configs`; an unknown one is an error."""
    known = {f.name for config in configs for f in fields(config)}
    if unknown := sorted(set(options) - known):
        raise CratelabError(f"unknown option(s) {', '.join(unknown)} for {method!r}; "
                            f"known: {', '.join(sorted(known)) or 'none'}")
    return options
