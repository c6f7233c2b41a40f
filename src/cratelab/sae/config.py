"""`[sae]`: a sparse autoencoder trained on one hook point of a run, typed and validated like the run
configs (TOML, `--set sae.key=value`, ConfigError naming the field)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import apply_overrides, read_toml, require_seed
from ..errors import ConfigError
from ..runtime import require_memory
from ..validate import choose, require, require_device, section_from_dict, setting

ARCHITECTURES = ("relu", "topk")  # ReLU + L1 (the paper's), TopK (the current standard)


@dataclass
class SAEConfig:
    architecture: str = setting("relu", '"relu" (ReLU + L1 penalty, dead features resampled) | "topk"')
    expansion_factor: int = setting(16, "d_sae = expansion_factor * d_in, unless d_sae is set (the paper: 16 x 512)")
    d_sae: int = setting(0, "0: expansion_factor * d_in")
    l1_coefficient: float = setting(5.0, "relu: weight of the L1 penalty (SAELens scales it by the decoder norms)")
    l1_warm_up_steps: int = setting(0, "relu: steps over which the L1 weight ramps up from 0")
    k: int = setting(32, "topk: features active per token")
    aux_loss_coefficient: float = setting(1.0, "topk: SAELens's auxiliary loss that revives dead features")
    lr: float = setting(4e-4, "the paper's")
    lr_warm_up_steps: int = setting(0, "steps of linear learning-rate warmup")
    lr_decay_steps: int = setting(0, "linear decay to 0 over the last steps (SAELens's schedule); 0 = constant")
    tokens: int = setting(2_000_000, "training activations (one per token)")
    batch_size: int = setting(4096, "activations per optimizer step (the paper: 4 x 1024)")
    buffer_tokens: int = setting(65_536, "activations shuffled together; memory is this x d_in floats")
    model_batch_size: int = setting(16, "windows of model.block_size tokens per forward pass of the model")
    dead_feature_window: int = setting(1000, "steps without firing that make a feature dead")
    resample_every: int = setting(0, "relu: resample dead features every this many steps (0 = never)")
    eval_tokens: int = setting(65_536, "held-out tokens for `sae` evaluation (L0, FVU, spliced CE loss)")
    checkpoint_every: int = setting(0, "steps between resumable checkpoints; 0 = after every buffer")
    seed: int = setting(0, "SAE init and the activation buffer's shuffling")
    device: str = setting("auto", '"auto" | "cpu" | "cuda" | "cuda:N" | "mps"', execution=True)
    threads: int = setting(0, "torch intra-op threads on CPU; 0 = torch's default", execution=True)

    def validate(self, prefix: str = "sae") -> None:
        p = prefix + "."
        choose(self.architecture, ARCHITECTURES, p + "architecture")
        for name in ("expansion_factor", "k", "tokens", "batch_size", "buffer_tokens", "model_batch_size",
                     "dead_feature_window", "eval_tokens"):
            require(getattr(self, name) >= 1, p + name, f"must be >= 1, got {getattr(self, name)}")
        require_seed(self.seed, p + "seed")  # torch keeps 32 bits of it: 2^32 would train as 0
        for name in ("d_sae", "l1_warm_up_steps", "lr_warm_up_steps", "lr_decay_steps", "resample_every",
                     "checkpoint_every", "threads", "l1_coefficient", "aux_loss_coefficient"):
            require(getattr(self, name) >= 0, p + name, f"must be >= 0, got {getattr(self, name)}")
        require(self.lr > 0, p + "lr", f"must be > 0, got {self.lr}")
        require(self.batch_size <= self.buffer_tokens, p + "buffer_tokens",
                f"must be >= sae.batch_size ({self.batch_size}), got {self.buffer_tokens}")
        require(self.tokens >= self.batch_size, p + "tokens",
                f"must be >= sae.batch_size ({self.batch_size}), got {self.tokens}")
        require_device(self.device, p + "device")

    def width(self, d_in: int) -> int:
        """d_sae for an input of d_in dimensions."""
        return self.d_sae or self.expansion_factor * d_in

    def check_fits_in_memory(self, d_in: int, window: int, prefix: str = "sae") -> None:
        """Refuse, before anything runs, an SAE whose training needs more than this machine's memory: its two
        float32 matrices four times over (weights, gradients, Adam's two moments), and the activation buffer
        (float32 activations, copied once when shuffled, and their int64 order)."""
        width = self.width(d_in)
        require_memory(4 * 4 * 2 * d_in * width, f"{prefix}.{'d_sae' if self.d_sae else 'expansion_factor'}",
                       f"SAE matrices of {d_in:,} x {width:,}", "their weights, gradients and Adam moments")
        activations = -(-self.buffer_tokens // window) * window
        require_memory((2 * 4 * d_in + 8) * activations, f"{prefix}.buffer_tokens",
                       f"{activations:,} buffered activations of {d_in:,} dimensions", "the shuffled buffer")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sae_config_from_dict(values: dict[str, Any]) -> SAEConfig:
    cfg = section_from_dict(SAEConfig, values, "sae")
    cfg.validate()
    return cfg


def load_sae_config(path: str | Path | None = None, overrides: list[str] = ()) -> SAEConfig:
    """The [sae] section of a TOML file (other sections are ignored: a run config may carry one), or the
    defaults, with `--set sae.key=value` overrides applied."""
    values = read_toml(path) if path is not None else {}
    for text in overrides:
        if not text.split("=", 1)[0].strip().startswith("sae."):
            raise ConfigError("--set", f"sae takes sae.* overrides, got {text.split('=', 1)[0].strip()!r}")
    values = apply_overrides({"sae": values.get("sae", {})}, list(overrides))
    return sae_config_from_dict(values["sae"])
