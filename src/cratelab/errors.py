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
    """A failed ``torch.load(weights_only=True)`` as one line. torch's own message spans many lines and
    suggests weights_only=False, which would let the file run code: we never do that."""
    import re

    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    detail = (match[1] if match else text.strip().splitlines()[0] if text.strip() else type(err).__name__).strip()
    if "global" in detail.lower():
        return CratelabError(f"{path}: refused: the file holds pickled Python objects besides tensors and plain "
                             f"values, and loading them could run code ({detail.split('. ')[0]})")
    return CratelabError(f"{path}: not a loadable checkpoint (damaged, or not a PyTorch file: {detail})")
