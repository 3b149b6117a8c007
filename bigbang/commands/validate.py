from __future__ import annotations

from bigbang.cli import console, plain
from bigbang.inventory import load_inventory


def register(sub) -> None:
    p = sub.add_parser("validate", help="check an inventory; every problem as file:line: path: message")
    p.add_argument("path", help="inventory file or directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from bigbang.insecure import warning_lines

    inventory = load_inventory(args.path)
    console().print(plain(f"ok: {inventory.summary()}"))
    for line in warning_lines(inventory):
        console(stderr=True).print(plain(line))
    return 0
