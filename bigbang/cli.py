"""The `bigbang` command. Subcommands live in bigbang/commands/, one module each.

User errors (bad inventory, unknown run, missing secret) print one clear line
and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from rich.console import Console

from bigbang import __version__
from bigbang.errors import InventoryError, UserError

err = Console(stderr=True, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigbang",
        description="Plan, rehearse and run a Big Bang: the weekend a whole IT platform is swapped at once.",
    )
    parser.add_argument("--version", action="version", version=f"bigbang {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import bigbang.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"bigbang.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InventoryError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        err.print(f"error: {exc}", markup=False)
        return 1
    except UserError as exc:
        err.print(f"error: {exc}", markup=False)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
