from __future__ import annotations

from pathlib import Path

from bigbang.cli import console, plain
from bigbang.errors import UserError
from bigbang.inventory import load_inventory
from bigbang.inventory.generate import PRESETS, Size, generate, write


def register(sub) -> None:
    p = sub.add_parser("inventory", help="make inventories: generate realistic ones, import devices from CSV")
    isub = p.add_subparsers(dest="inventory_command", metavar="ACTION")
    isub.required = True

    g = isub.add_parser("generate", help="a deterministic, realistic inventory of any size")
    g.add_argument("--preset", choices=sorted(PRESETS), help="holstebro (150 locations, 3,500 devices, 400 servers) "
                   "or hoglandet (250 locations, 10,000 computers, 400 servers)")
    g.add_argument("--locations", type=int)
    g.add_argument("--workstations", type=int)
    g.add_argument("--thin-clients", type=int)
    g.add_argument("--servers", type=int)
    g.add_argument("--locale", choices=("da", "sv"), help="names and addresses (default: da, or the preset's)")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--force", action="store_true", help="write into a non-empty directory")
    g.set_defaults(func=run_generate)

    i = isub.add_parser("import", help="devices from an asset spreadsheet (CSV) into per-location YAML files")
    i.add_argument("csv", help="CSV file with a header row (see docs: location_id, kind, hostname, serial, mac, ...)")
    i.add_argument("--out", required=True, metavar="DIR", help="directory for locations/<id>.yaml")
    i.add_argument("--delimiter", help="column separator (default: detected; Excel in Danish/Swedish uses ';')")
    i.add_argument("--force", action="store_true", help="overwrite existing location files")
    i.set_defaults(func=run_import)


def run_generate(args) -> int:
    base = PRESETS.get(args.preset) if args.preset else None
    if base is None and None in (args.locations, args.workstations, args.thin_clients, args.servers):
        raise UserError("give --preset, or all of --locations, --workstations, --thin-clients and --servers")
    base = base or Size(0, 0, 0, 0)
    size = Size(
        locations=args.locations if args.locations is not None else base.locations,
        workstations=args.workstations if args.workstations is not None else base.workstations,
        thin_clients=args.thin_clients if args.thin_clients is not None else base.thin_clients,
        servers=args.servers if args.servers is not None else base.servers,
        locale=args.locale or base.locale,
    )
    files = write(generate(size, args.seed), Path(args.out), force=args.force)
    inventory = load_inventory(args.out)  # what we write must validate
    console().print(plain(f"wrote {len(files)} files to {args.out}: {inventory.summary()}"))
    return 0


def run_import(args) -> int:
    from bigbang.inventory.csvimport import import_csv

    result = import_csv(Path(args.csv), Path(args.out), delimiter=args.delimiter, force=args.force)
    err = console(stderr=True)
    for problem in result.problems:
        err.print(plain(str(problem)))
    not_written = f"; {result.files_refused} location files not written" if result.files_refused else ""
    console().print(
        f"imported {result.devices} devices into {len(result.files)} location files in {args.out}; "
        f"{result.refused} row{'s' if result.refused != 1 else ''} refused{not_written}")
    return 1 if result.problems else 0
