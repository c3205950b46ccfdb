"""``python -m bilaf_core <command> …`` — the headless engine.

Each sub-command lives in ``bilaf_core/commands/<name>.py`` and provides ``ORDER`` (its place in
``--help``) and ``add_parser(subparsers)``, which registers the parser and sets ``func(args) ->
int``.  Bad input raises :class:`~bilaf_core.errors.BilafError`: exit status 2 and one line on
stderr, no output file left behind.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import BilafError, Cancelled


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bilaf_core",
        description="BiLAF Studio: one-shot active finetuning — extract features, select, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"bilaf_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = [importlib.import_module(f"{commands.__name__}.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    for module in sorted(modules, key=lambda mod: getattr(mod, "ORDER", 100)):
        module.add_parser(sub)
    return parser



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BilafError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
