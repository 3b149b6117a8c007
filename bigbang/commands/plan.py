from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from bigbang.errors import UserError
from bigbang.inventory import load_inventory
from bigbang.plan import PHASES, STEP_KINDS, Plan
from bigbang.session import inventory_plan

DETAIL_LIMIT = 200  # devices; above this the device tables need --all or --location


def register(sub) -> None:
    p = sub.add_parser("plan", help="show exactly what a run will do")
    p.add_argument("path", help="inventory file or directory")
    p.add_argument("--mode", choices=("rehearsal", "live"), default="rehearsal",
                   help="which connectors the steps use (default: rehearsal, like `run`)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--location", action="append", metavar="ID", help="show the device steps of this location")
    p.add_argument("--all", action="store_true", help="show every device's steps, however many")
    p.add_argument("--vcenter", action="store_true",
                   help="also compare the servers with vCenter (connectors.vsphere): create / reconfigure / fine")
    p.set_defaults(func=run)


def run(args) -> int:
    inventory = load_inventory(args.path)
    plan = inventory_plan(inventory, args.path, args.mode)  # as `run` would: with a stored schedule
    if args.json:
        sys.stdout.write(plan.to_json() + "\n")
        return 0
    console = Console()
    show(console, plan, inventory, args.location, args.all)
    if args.vcenter:
        from bigbang.commands.vcenter import assess_inventory, diff_exit_status, show_diff

        results = assess_inventory(inventory)
        show_diff(console, results)
        return diff_exit_status(results)  # the same as `bigbang vcenter diff`
    return 0


def show(console: Console, plan: Plan, inventory, only: list[str] | None, everything: bool) -> None:
    console.print(f"[bold]{plan.rollout}[/] — {plan.mode} plan, {plan.step_count} steps, "
                  f"retries {plan.retries}, inventory {plan.inventory_digest}")
    phases = Table(title="Phases", title_justify="left")
    phases.add_column("phase")
    phases.add_column("steps", justify="right")
    phases.add_column("what")
    for phase in PHASES:
        kinds = [k for k in STEP_KINDS.values() if k.phase == phase]
        count = sum(1 for s in plan.steps() if s.phase == phase)
        phases.add_row(phase, str(count), ", ".join(k.kind for k in kinds))
    console.print(phases)

    servers = Table(title="Servers, in dependency waves", title_justify="left")
    for col in ("wave", "server", "depends on", "steps", "connector"):
        servers.add_column(col)
    for srv in plan.servers:
        steps = [s.kind for s in (*srv.prechecks, *srv.steps)]
        servers.add_row(str(srv.wave + 1), srv.name, ", ".join(srv.depends_on) or "–", " → ".join(steps),
                        srv.steps[0].connector)
    console.print(servers)

    locs = Table(title="Locations, in dispatch order per team", title_justify="left")
    for col in ("location", "name", "team", "criticality", "starts after", "workstations", "thin clients", "steps"):
        locs.add_column(col, justify="right" if col in ("workstations", "thin clients", "steps") else "left")
    for loc in plan.locations:
        after = [f"wave {w + 1}" for w in loc.waits_for_waves]
        if loc.after_location:
            after.append(loc.after_location)
        ws = sum(1 for d in loc.devices if d.kind == "workstation")
        locs.add_row(loc.id, inventory.location_by_id[loc.id].name, loc.team, loc.criticality,
                     ", ".join(after) or "prechecks", str(ws), str(len(loc.devices) - ws),
                     str(sum(1 for _ in loc.steps())))
    console.print(locs)

    wanted = set(only or [])
    unknown = wanted - {loc.id for loc in plan.locations}
    if unknown:
        raise UserError(f"unknown location {', '.join(sorted(unknown))}", hint="see the Locations table")
    total_devices = sum(len(loc.devices) for loc in plan.locations)
    if not wanted and not everything and total_devices > DETAIL_LIMIT:
        console.print(f"{total_devices} devices: device steps not shown; use --location ID, --all or --json.")
        return
    for loc in plan.locations:
        if wanted and loc.id not in wanted:
            continue
        table = Table(title=f"{loc.id} devices (parallel {loc.parallel_devices}, halts above "
                            f"{loc.max_fail_percent:g}% failed)", title_justify="left")
        for col in ("device", "kind", "steps", "connector", "target"):
            table.add_column(col)
        table.add_row(loc.id, "location", loc.precheck.kind, "bigbang",
                      "requires " + (", ".join(loc.requires) or "nothing"))
        for device in loc.devices:
            p = device.steps[0].params
            target = (f"{p['target_image']} ({p['image_version']})" if device.kind == "workstation"
                      else f"{p['target_profile']} as {p['hostname']}")
            table.add_row(device.hostname, device.kind, " → ".join(s.kind for s in device.steps),
                          device.steps[0].connector, target)
        table.add_row(loc.id, "location", loc.verify.kind, "bigbang", "verdict")
        console.print(table)
