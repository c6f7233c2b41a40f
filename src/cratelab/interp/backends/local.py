"""A local causal LM through transformers (a model directory or a .gguf file): the model the local explainer
and simulator (llm.py) ask, for a greedy answer to a chat or for the next-token probabilities of the digits at
each activation slot of a simulation prompt. A digit string the tokenizer splits (SmolLM2 writes "10" as "1"
"0") cannot be read at one position and is left out of the expectation.

transformers (with gguf and accelerate for .gguf files) is imported only when a model is loaded; nothing
is fetched from a hub (local_files_only). A .gguf file is dequantised on loading, to `dtype`: float32 takes
4 bytes a weight in memory, whatever the file's size (8.9 GB for the 1.1 GB file of a 1.5B model).
The settings (device, dtype, max_explanation_tokens) are interp.backend's: config.BackendConfig.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import torch

from ...errors import CratelabError
from ..prompts import MAX_ACTIVATION, Message, SimulationPrompt, slot_positions

INSTALL = "pip install 'cratelab[llm]' (transformers, gguf, accelerate)"


def check_model_path(path: str | Path) -> tuple[Path, dict[str, str]]:
    """The directory to load from and transformers' extra arguments for a model directory or .gguf file;
    a CratelabError when there is none or its packages are missing (checked before a run builds anything)."""
    if importlib.util.find_spec("transformers") is None:
        raise CratelabError(f"local LLM backends need transformers: {INSTALL}")
    path = Path(path)
    if not path.exists():
        raise CratelabError(f"no model directory or .gguf file at {path}")
    if path.is_dir():
        return path, {}
    if path.suffix != ".gguf":
        raise CratelabError(f"{path}: expected a model directory or a .gguf file")
    # transformers reads .gguf files with gguf and places their weights with accelerate
    if missing := [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]:
        raise CratelabError(f"loading {path.name} needs {' and '.join(missing)}: {INSTALL}")
    return path.parent, {"gguf_file": path.name}


class LocalLLM:
    """A tokenizer and causal LM loaded once, shared by the explainer and the simulator."""

    def __init__(self, path: str | Path, device: str = "auto", dtype: str = "float32"):
        from ...runtime import resolve_device

        directory, extra = check_model_path(path)
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise CratelabError(f"local LLM backends need transformers: {INSTALL}") from None
        self.device = resolve_device(device, setting="interp.backend.device")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **extra)
            model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True,
                                                         dtype=getattr(torch, dtype), **extra)
        except ImportError as e:
            raise CratelabError(f"loading {path} needs a missing package ({e}): {INSTALL}") from None
        except (OSError, ValueError) as e:
            raise CratelabError(f"cannot load a language model from {path}: {e}") from None
        self.model = model.to(self.device).eval()
        digits = {v: self.tokenizer.encode(str(v), add_special_tokens=False) for v in range(MAX_ACTIVATION + 1)}
        self.digit_values = [v for v, ids in digits.items() if len(ids) == 1]
        if not self.digit_values:
            raise CratelabError(f"{path}: no digit is a single token, so activations cannot be read off")
        self.digit_ids = torch.tensor([digits[v][0] for v in self.digit_values], device=self.device)
        # one computation at a time: scoring threads would only fight over the same cores
        self._lock = threading.Lock()

    def chat(self, messages: Sequence[Message], max_new_tokens: int, first_line: bool = False) -> str:
        """The model's greedy answer to chat messages; with first_line, generation stops once the answer's
        first non-empty line is complete (an explanation is one line: SmolLM2 went on for 150 tokens)."""
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            special = False  # the template writes its own special tokens
        else:  # a base model: the conversation as plain text, to be continued
            text = "".join(m["content"] + ("\n\n" if m["role"] != "user" else "") for m in messages)
            special = True
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=special).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        start = inputs["input_ids"].shape[1]

        def line_done(input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            done = "\n" in self.tokenizer.decode(input_ids[0, start:], skip_special_tokens=True).lstrip()
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        with self._lock, torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                      stopping_criteria=[line_done] if first_line else None)
        return self.tokenizer.decode(out[0, start:], skip_special_tokens=True)

    def slot_probabilities(self, prompt: SimulationPrompt) -> list[dict[int, float]]:
        """Per activation slot, the next-token probabilities of the single-token digits.

        Raises ValueError when a slot does not start a token of this tokenizer.
        """
        enc = self.tokenizer(prompt.text, return_tensors="pt", return_offsets_mapping=True)
        positions = slot_positions(enc["offset_mapping"][0, :, 0].tolist(), prompt.slots)
        # logits at the token before a slot predict the slot; compute them there only (vocab-sized rows)
        before = torch.tensor([p - 1 for p in positions], device=self.device)
        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=enc["input_ids"].to(self.device),
                                attention_mask=enc["attention_mask"].to(self.device), logits_to_keep=before).logits[0]
        probs = torch.softmax(logits.float(), dim=-1)[:, self.digit_ids]
        return [dict(zip(self.digit_values, row)) for row in probs.tolist()]
