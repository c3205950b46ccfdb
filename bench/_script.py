"""How every bench script ends: run its ``main()``; bad input is one line on stderr, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn


def run(main: Callable[[], int | None]) -> NoReturn:
    """Exit with ``main()``'s status; a :class:`BilafError` (what to fix) prints ``error: …`` and exits 2."""
    from bilaf_core.errors import BilafError

    try:
        status = main()
    except BilafError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    sys.exit(status or 0)
