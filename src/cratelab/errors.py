"""User-facing errors: the CLI prints them as one line and exits with code 2 (no traceback)."""


class CratelabError(Exception):
    """A problem the user can fix (bad input, missing file, unavailable source)."""


class ConfigError(CratelabError):
    """A bad configuration value; ``field`` is the dotted name of the offending field (``section.key``,
    or a flag such as ``--set``). Defined here, not in config.py, so that runtime.py can raise it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


def unpickling_error(path: object, err: Exception) -> CratelabError:
    """A failed ``torch.load(weights_only=True)`` as one line of our own words. torch's message spans many
    lines and suggests re-running with weights_only=False, which would let the file run code: we never do
    that, so none of its advice is repeated; only the name of the refused object is kept."""
    import re

    text = str(err)
    refused = re.search(r"GLOBAL\s+([\w.]+)", text)
    if refused or "global" in text.lower():
        what = f"it names {refused[1]}" if refused else "it names a Python object"
        return CratelabError(f"{path}: refused: the file holds pickled Python objects besides tensors and plain "
                             f"values, and loading them could run code ({what}); it was not loaded")
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not re.search(r"weights_only|trusted source|documentation|PyTorch 2\.6", line)]
    reason = (detail[1] if detail else lines[0] if lines else type(err).__name__).strip()
    return CratelabError(f"{path}: not a loadable checkpoint (damaged, or not a PyTorch file: {reason[:200]})")
