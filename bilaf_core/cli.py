"""``python -m bilaf_core <command> …`` — the headless engine.

Each sub-command lives in ``bilaf_core/commands/<name>.py`` and provides ``ORDER`` (its place in
``--help``) and ``add_parser(subparsers)``, which registers the parser and sets ``func(args) ->
int``.  Bad input raises :class:`~bilaf_core.errors.BilafError`: exit status 2 and one line on
stderr, no output file left behind.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import __version__, commands
from .errors import BilafError, Cancelled


WORKSPACE_HELP = "workspace folder (default: $BILAF_WORKSPACE, else <project>/workspace)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bilaf_core",
        description="BiLAF Studio: one-shot active finetuning — extract features, select, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"bilaf_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser.add_argument("--workspace", metavar="DIR", help=WORKSPACE_HELP)
    modules = [importlib.import_module(f"{commands.__name__}.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    for module in sorted(modules, key=lambda mod: getattr(mod, "ORDER", 100)):
        module.add_parser(sub)
    # accepted after the command name too: `python -m bilaf_core runs --workspace DIR`
    for command in sub.choices.values():
        if "--workspace" not in command._option_string_actions:
            command.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help=WORKSPACE_HELP)
    return parser



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the command line as given (main() is also called with a list, where sys.argv is the caller's)
    args.command_line = ["python", "-m", "bilaf_core"] + list(sys.argv[1:] if argv is None else argv)
    previous = os.environ.get("BILAF_WORKSPACE")
    if getattr(args, "workspace", None):
        # one mechanism for every command: the workspace root is read from the environment
        os.environ["BILAF_WORKSPACE"] = str(args.workspace)
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
    finally:
        if getattr(args, "workspace", None):  # leave the caller's environment as it was (tests call main())
            if previous is None:
                os.environ.pop("BILAF_WORKSPACE", None)
            else:
                os.environ["BILAF_WORKSPACE"] = previous
