"""Errors shared by the engine, the CLI and the app.

`BilafError` is the one exception for *bad user input*: its message says what is wrong and what
to do about it.  The CLI turns it into exit status 2 and one line on stderr; the app shows it as
an error box.  Anything else that escapes is a bug.
"""


class BilafError(ValueError):
    """Bad input (missing file, wrong shape, impossible budget…).  The message says what to fix."""


class Cancelled(RuntimeError):
    """Raised by a progress callback to stop long work (extraction, selection, finetuning)."""
