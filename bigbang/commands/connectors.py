from __future__ import annotations

import typing

from rich.console import Console
from rich.table import Table

from bigbang.connectors import CONNECTORS


def register(sub) -> None:
    p = sub.add_parser("connectors", help="list connectors and every setting they take (from their own models)")
    p.add_argument("name", nargs="?", choices=sorted(CONNECTORS), help="one connector")
    p.set_defaults(func=run)


def _type_name(annotation) -> str:
    text = str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("bigbang.inventory.model.", "").replace("SecretRef", "secret reference")


def run(args) -> int:
    console = Console()
    for name, ctype in CONNECTORS.items():
        if args.name and name != args.name:
            continue
        where = "rehearsal:" if name == "simulated" else f"connectors.{name}:"
        table = Table(title=f"{name} — {ctype.summary}\nsettings under `{where}`; steps: "
                            f"{', '.join(sorted(ctype.step_kinds))}", title_justify="left")
        for col in ("setting", "type", "default", "meaning"):
            table.add_column(col)
        for field_name, field in ctype.settings_model.model_fields.items():
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            table.add_row(field_name, _type_name(field.annotation), default, field.description or "")
        console.print(table)
    return 0
