"""The one exception type the command-line tools turn into a single `error:` line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (a name, an option, a file): the message says what and what to do."""


def unknown_name(
    what: str, name: str, choices: Iterable[str], then: str, where: str = ""
) -> UserError:
    """"unknown <what> 'x'<where>; did you mean y? <then>": the error for every misspelt name."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    did_you_mean = f"did you mean {', '.join(close)}? " if close else ""
    return UserError(f"unknown {what} '{name}'{where}; {did_you_mean}{then}")
