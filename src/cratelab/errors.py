"""User-facing errors: the CLI prints them as one line and exits with code 2 (no traceback)."""


class CratelabError(Exception):
    """A problem the user can fix (bad input, missing file, unavailable source)."""
