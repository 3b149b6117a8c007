"""The `bigbang` command. Subcommands live in bigbang/commands/, one module each.

User errors (bad inventory, unknown run, missing secret) print one clear line
and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys

from rich.console import Console

from bigbang import __version__
from bigbang.errors import InventoryError, LedgerError, UserError

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def console(stderr: bool = False) -> Console:
    """A console for lines that carry user data: nothing in them is read as markup or emoji codes
    (`nor:cd:101` stays text), and when not writing to a terminal no line is wrapped."""
    out = Console(stderr=stderr, highlight=False, markup=False, emoji=False)
    if not out.is_terminal:
        out.soft_wrap = True
    return out


def plain(text: str) -> str:
    """`text` with control characters (ESC, NUL, ...) shown as escapes, never sent to the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def one_line(text: str) -> str:
    """A message on one line: a driver's multi-line text joined, its "Background on this error" dropped."""
    lines = [line.strip() for line in text.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("(Background on this error"))


err = console(stderr=True)


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
    # Ledgers, reports, checklists and state hold names, addresses and serials: readable by their owner only
    # (files 0600, directories 0700), also in the workers and flow runs started from here. Only as the
    # process's own command (argv None): a program that calls main() keeps its umask.
    previous = os.umask(0o077)
    if argv is not None:
        os.umask(previous)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InventoryError as exc:
        for problem in exc.problems:
            err.print(plain(str(problem)))
        err.print(plain(f"error: {exc}"))
        return getattr(exc, "exit_code", 1)  # `bigbang run` sets its own codes (README, "Exit codes")
    except (UserError, LedgerError) as exc:  # a ledger that cannot be opened is the user's to fix
        err.print(plain(f"error: {one_line(str(exc))}"))
        return getattr(exc, "exit_code", 1)
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535 (a usage error otherwise, not a traceback)."""
    import argparse

    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1 to 65535)")
    return port
