from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bigbang.checklists import dispatch_order as ordered
from bigbang.checklists import schedule
from bigbang.cli import console
from bigbang.errors import UserError
from bigbang.inventory import load_inventory
from bigbang.plan import PHASES, STEP_KINDS, LocationPlan, Plan
from bigbang.session import inventory_plan

DETAIL_LIMIT = 200  # devices; above this the device tables need --all or --location
SMALL_LOCATIONS, SMALL_SERVERS = 10, 20  # an inventory this small is listed whole without --verbose


def register(sub) -> None:
    p = sub.add_parser("plan", help="show exactly what a run will do")
    p.add_argument("path", help="inventory file or directory")
    p.add_argument("--mode", choices=("rehearsal", "live"), default="rehearsal",
                   help="which connectors the steps use (default: rehearsal, like `run`)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--location", action="append", metavar="ID", help="show the device steps of this location")
    p.add_argument("--all", action="store_true", help="show every device's steps, however many")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every server and location (the default is a summary by wave and team)")
    p.add_argument("--vcenter", action="store_true",
                   help="also compare the servers with vCenter (connectors.vsphere): create / reconfigure / fine")
    p.set_defaults(func=run)


def run(args) -> int:
    from bigbang.cli import console as make_console
    from bigbang.cli import plain
    from bigbang.insecure import warning_lines

    inventory = load_inventory(args.path)
    plan = inventory_plan(inventory, args.path, args.mode)  # as `run` would: with a stored schedule
    for line in warning_lines(inventory):
        make_console(stderr=True).print(plain(line))
    if args.json:
        sys.stdout.write(plan.to_json() + "\n")
        return 0
    out = console()
    if not out.is_terminal:  # a file or a pipe: whole lines, never wrapped
        out.width = 1000
    show(out, plan, inventory, args.location, args.all, verbose=args.verbose)
    if args.vcenter:
        from bigbang.commands.vcenter import assess_inventory, diff_exit_status, show_diff

        results = assess_inventory(inventory)
        show_diff(out, results)
        return diff_exit_status(results)  # the same as `bigbang vcenter diff`
    return 0


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 location", "2 locations" (and "1 thin client", "3 thin clients")."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", overflow="fold")
    return table


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … {len(names) - limit} more" if len(names) > limit else "")


def dispatch_order(plan: Plan) -> list[tuple[str, int, LocationPlan]]:
    """(team, place in the team's order, location): sorted by team, then by the order the team takes them."""
    places = schedule(plan)
    return [(loc.team, places[loc.id][0], loc) for loc in ordered(plan)]


def show(console: Console, plan: Plan, inventory, only: list[str] | None, everything: bool,
         verbose: bool = False) -> None:
    """A summary by phase, server wave and team's locations; every server and location with `verbose`,
    device steps with `only` (location ids) or `everything`."""
    devices = sum(len(loc.devices) for loc in plan.locations)
    verbose = verbose or (len(plan.locations) <= SMALL_LOCATIONS and len(plan.servers) <= SMALL_SERVERS)
    console.print(Text.assemble((plan.rollout, "bold"), f" — {plan.mode} plan: {plural(plan.step_count, 'step')}, "
                                f"{plural(len(plan.servers), 'server')}, {plural(len(plan.locations), 'location')}, "
                                f"{plural(devices, 'device')}; retries {plan.retries}; "
                                f"inventory {plan.inventory_digest}"))
    phases = _table("Phases, in the order they run", "phase", "steps", "what", right=("steps",))
    for phase in PHASES:
        kinds = [k for k in STEP_KINDS.values() if k.phase == phase]
        count = sum(1 for s in plan.steps() if s.phase == phase)
        phases.add_row(phase, str(count), ", ".join(k.kind for k in kinds))
    console.print(phases)

    waves: dict[int, list] = {}
    for srv in plan.servers:
        waves.setdefault(srv.wave, []).append(srv)
    if verbose:
        servers = _table("Servers, in dependency waves", "wave", "server", "depends on", "steps", "connector")
        for srv in sorted(plan.servers, key=lambda s: (s.wave, s.name)):
            steps = [s.kind for s in (*srv.prechecks, *srv.steps)]
            servers.add_row(str(srv.wave + 1), srv.name, ", ".join(srv.depends_on) or "–", " → ".join(steps),
                            srv.steps[0].connector)
    else:
        servers = _table("Server waves, in the order they run", "wave", "servers", "which", "needs", right=("servers",))
        for wave in sorted(waves):
            members = sorted(waves[wave], key=lambda s: s.name)
            needs = sorted({w + 1 for s in members for d in s.depends_on
                            for w in [next((o.wave for o in plan.servers if o.name == d), -1)] if w >= 0})
            servers.add_row(str(wave + 1), str(len(members)), _names([s.name for s in members]),
                            ", ".join(f"wave {w}" for w in needs) or "–")
    if plan.servers:
        console.print(servers)

    order = dispatch_order(plan)
    if verbose:
        locs = _table("Locations, in dispatch order per team", "team", "#", "location", "name", "criticality",
                      "starts after", "workstations", "thin clients", "steps",
                      right=("#", "workstations", "thin clients", "steps"))
        for team, place, loc in order:
            after = [f"wave {w + 1}" for w in loc.waits_for_waves]
            if loc.after_location:
                after.append(loc.after_location)
            ws = sum(1 for d in loc.devices if d.kind == "workstation")
            locs.add_row(team, str(place), loc.id, inventory.location_by_id[loc.id].name, loc.criticality,
                         ", ".join(after) or "prechecks", str(ws), str(len(loc.devices) - ws),
                         str(sum(1 for _ in loc.steps())))
    else:
        locs = _table("Locations per team, in dispatch order", "team", "locations", "workstations", "thin clients",
                      "waits for", "order", right=("locations", "workstations", "thin clients"))
        teams: dict[str, list[LocationPlan]] = {}
        for team, _, loc in order:
            teams.setdefault(team, []).append(loc)
        for team, members in teams.items():
            ws = sum(1 for loc in members for d in loc.devices if d.kind == "workstation")
            total = sum(len(loc.devices) for loc in members)
            waits = sorted({w + 1 for loc in members for w in loc.waits_for_waves})
            ids = [loc.id for loc in members]
            sequence = " → ".join(ids) if len(ids) <= 4 else " → ".join([*ids[:3], "…", ids[-1]])
            locs.add_row(team, str(len(members)), str(ws), str(total - ws),
                         ", ".join(f"wave {w}" for w in waits) or "prechecks", sequence)
    console.print(locs)

    wanted = set(only or [])
    unknown = wanted - {loc.id for loc in plan.locations}
    if unknown:
        raise UserError(f"unknown location {', '.join(sorted(unknown))}", hint="see the Locations table")
    if not wanted and not everything:
        if not verbose or devices > DETAIL_LIMIT:
            console.print(f"Details: --verbose (every server and location), --location ID (one location's "
                          f"devices and steps), --all ({plural(devices, 'device')}), --json.")
            return
    for _, _, loc in order:
        if wanted and loc.id not in wanted:
            continue
        table = _table(f"{loc.id} devices (parallel {loc.parallel_devices}, halts above "
                       f"{loc.max_fail_percent:g}% failed)", "device", "kind", "steps", "connector", "target")
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
