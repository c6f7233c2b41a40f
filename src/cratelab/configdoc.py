"""docs/config.md, written from the config dataclasses' field metadata: every section and field with its type,
default, whether it is *computed* (part of what a run computes: changing it is another run) or *execution* (where
and how it runs: a resumed run, sweep, interpret or SAE folder may change it), and its one description.

    python -m cratelab.configdoc > docs/config.md
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import tomli_w

from .config import Arm, DataConfig, EvalConfig, ModelConfig, Question, QuestionsConfig, SlurmConfig, SweepConfig
from .config import TrainConfig
from .interp.config import BackendConfig, InterpConfig, RecordConfig
from .sae.config import SAEConfig

# each section as a config file writes it, in the order docs/config.md lists them
SECTIONS: list[tuple[str, type]] = [
    ("[model]", ModelConfig), ("[data]", DataConfig), ("[train]", TrainConfig), ("[eval]", EvalConfig),
    ("[interp]", InterpConfig), ("[interp.records]", RecordConfig), ("[interp.backend]", BackendConfig),
    ("[sae]", SAEConfig), ("[sweep]", SweepConfig), ("[sweep.slurm]", SlurmConfig),
    ("[sweep.questions]", QuestionsConfig), ("[[sweep.questions.primary]] and [[sweep.questions.secondary]]", Question),
    ("[[sweep.arms]]", Arm),
]

HEADER = """# Configuration reference

Written by `python -m cratelab.configdoc > docs/config.md` from the field metadata of the config dataclasses
(tests/test_config_docs.py fails when it is stale): edit the descriptions there, not here.

*computed*: part of what a run computes; a resumed run, sweep, interpret or SAE folder refuses a change of it
(naming the field). *execution*: only where and how it runs; a resume may change it. A few more changes are
accepted by one command alone: `train.max_steps`, `train.eval_interval` and `[interp]` by `train`; `sweep.seeds`,
the factor levels and `[sweep.questions]` by `ablate`; `sae.eval_tokens` by `sae`.
"""


def _type_name(typ: Any) -> str:
    return typ.__name__ if isinstance(typ, type) else re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(typ))  # no modules


def _toml(value: Any) -> str:
    """A value as a config file writes it, on one line."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + "}"
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def _default(f: dataclasses.Field, typ: Any) -> str:
    if dataclasses.is_dataclass(typ):
        return "(a section)"
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "(required)"
    value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        value = [dataclasses.asdict(item) for item in value]
    return f"`{_toml(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_reference(title: str, cls: type, execution: bool = False) -> str:
    """One section: its docstring's first paragraph and a row per field (each execution in an execution section)."""
    hints = typing.get_type_hints(cls)
    doc = (cls.__doc__ or "").strip()
    summary = "" if doc.startswith(cls.__name__ + "(") else doc.split("\n\n")[0].replace("\n    ", " ")  # generated
    lines = [f"## {title}", "", *([summary, ""] if summary else []),
             "| field | type | default | kind | description |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        kind = "execution" if execution or f.metadata.get("execution") else "computed"
        lines.append(f"| `{f.name}` | `{_type_name(hints[f.name])}` | {_cell(_default(f, hints[f.name]))} | {kind} | "
                     f"{_cell(f.metadata.get('doc', ''))} |")
    return "\n".join(lines) + "\n"


def config_reference() -> str:
    """The text of docs/config.md."""
    execution = {typing.get_type_hints(cls)[f.name] for _, cls in SECTIONS for f in dataclasses.fields(cls)
                 if f.metadata.get("execution")}  # a section that is an execution field: [sweep.slurm]
    return "\n".join([HEADER, *(section_reference(title, cls, cls in execution) for title, cls in SECTIONS)])


if __name__ == "__main__":
    print(config_reference(), end="")
