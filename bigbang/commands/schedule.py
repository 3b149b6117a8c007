"""`bigbang schedule`: fit the weekend into its window, and check a run against its schedule.

    bigbang schedule PATH [--json] [--out DIR] [--from-run RUN_ID] [--seed N] [--time-limit S]
    bigbang schedule PATH --risk N [--seed S]     # how likely it fits: N Monte Carlo trials
    bigbang schedule compare RUN_ID [--json]
    bigbang schedule deployment PATH [--run-id RUN_ID]
    bigbang schedule checkin RUN_ID LOCATION --by PERSON [--lead OPS_LEAD]   # an ops lead's password vouches
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bigbang.commands.on_behalf import add_lead_option
from bigbang.errors import UserError

EXIT_DOES_NOT_FIT = 2
SUBCOMMANDS = ("compare", "deployment", "checkin")


def register(sub) -> None:
    p = sub.add_parser(
        "schedule", help="fit the locations into the window: teams, slots, verdict, Gantt charts",
        description="Compute the weekend's schedule: each location to a team and a time slot, inside its "
                    "access hours, after its servers, with travel between locations. Prints the verdict "
                    "(fits with how much slack, or what does not fit and what would make it fit), the makespan "
                    "beside a proven lower bound, and writes Gantt charts (SVG, PNG, HTML). The schedule is "
                    "stored next to the inventory; runs of that inventory then follow it. "
                    "`bigbang schedule compare RUN_ID` shows planned vs actual per location; "
                    "`bigbang schedule deployment PATH` prints the Prefect schedule that starts the weekend; "
                    "`bigbang schedule checkin RUN_ID LOCATION --by PERSON --lead OPS_LEAD` records a technician's "
                    "arrival, vouched for by an ops lead's password.")
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="inventory file or directory (or: compare RUN_ID, deployment PATH)")
    p.add_argument("--replan", metavar="RUN_ID",
                   help="re-solve the rest of a running weekend from its current state: finished and running "
                        "locations stay; the new slots become the run's next plan version")
    p.add_argument("--without", action="append", default=[], metavar="TECHNICIAN",
                   help="with --replan: this technician has dropped out (repeat for several)")
    p.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("location", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--by", metavar="PERSON", help="checkin: the technician (id in the inventory) who arrived")
    add_lead_option(p)
    p.add_argument("--json", action="store_true", help="print the schedule (or comparison) as JSON")
    p.add_argument("--out", metavar="DIR", help="where to write the charts (default: reports/schedule-<rollout>)")
    p.add_argument("--from-run", metavar="RUN_ID", help="use step durations measured in this run")
    p.add_argument("--ledger", metavar="URL", help="ledger database for --from-run and compare")
    p.add_argument("--seed", type=int, default=0, help="seed of the heuristic and solver (default 0)")
    p.add_argument("--time-limit", type=float, default=10.0, metavar="S",
                   help="CP-SAT effort in (deterministic) seconds after the first answer; 0: heuristic only")
    p.add_argument("--no-store", action="store_true", help="do not store the schedule next to the inventory")
    p.add_argument("--team", action="append", metavar="ID", help="show only this team's itinerary")
    p.add_argument("--check", action="store_true", help=f"exit {EXIT_DOES_NOT_FIT} when it does not fit")
    p.add_argument("--risk", type=int, metavar="N",
                   help="play N Monte Carlo trials of the schedule with the rehearsal's duration spreads and failure "
                        "rates: probability of fitting, P50/P90 end, what makes it late, a chart (risk.svg/png)")
    p.add_argument("--run-id", help="deployment: the run the scheduled flow run works on")
    p.add_argument("--tolerance", type=float, default=15.0, metavar="MIN",
                   help="compare: minutes of slip before a location is flagged (default 15)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.replan:
        return replan(args)
    if args.path is None:
        raise UserError("give an inventory path", hint="bigbang schedule PATH, or bigbang schedule --replan RUN_ID")
    if args.path in SUBCOMMANDS:
        if not args.target:
            raise UserError(f"`bigbang schedule {args.path}` needs "
                            + ("an inventory path" if args.path == "deployment" else "a run id"))
        return {"compare": compare, "deployment": deployment, "checkin": checkin}[args.path](args)
    if args.target:
        raise UserError(f"unexpected argument '{args.target}'",
                        hint="bigbang schedule PATH, or bigbang schedule compare RUN_ID")
    if args.time_limit < 0:
        raise UserError("--time-limit cannot be negative")
    if args.risk is not None and not 1 <= args.risk <= 100_000:
        raise UserError("--risk takes the number of trials, 1 to 100000")
    from bigbang.inventory import load_inventory
    from bigbang.schedule import make_schedule
    from bigbang.schedule.render import itineraries, write_files
    from bigbang.schedule.store import save

    inventory = load_inventory(args.path)
    measured, measured_from = None, ""
    if args.from_run:
        from bigbang.schedule.problem import measured_durations
        from bigbang.store.ledger import Ledger

        measured, measured_from = measured_durations(Ledger(args.ledger), args.from_run), f"run {args.from_run}"
    schedule = make_schedule(inventory, seed=args.seed, time_limit=args.time_limit, measured=measured,
                             measured_from=measured_from)
    data = schedule.to_dict()
    out = Path(args.out) if args.out else _default_out(inventory.rollout.name)
    files = write_files(schedule, out)
    stored = None
    if not args.no_store:
        stored = save(args.path, data)
    if args.risk is not None:
        return risk(args, schedule, inventory, out, stored)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        show(Console(highlight=False), schedule, data, itineraries(schedule), args.team)
        console = Console(highlight=False)
        console.print(f"Charts: {files['html']} (and gantt*.svg/png in {out})")
        if stored:
            console.print(f"Stored: {stored} — runs of this inventory follow it (delete the file to run without).")
    return EXIT_DOES_NOT_FIT if args.check and not schedule.verdict.fits else 0


def replan(args) -> int:
    from bigbang.plan import build_plan
    from bigbang.schedule.render import itineraries
    from bigbang.schedule.replan import replan_run
    from bigbang.session import frozen_run
    from bigbang.store.ledger import Ledger

    ledger = Ledger(args.ledger)
    result = replan_run(ledger, args.replan, without=args.without, seed=args.seed)
    schedule = result.schedule
    data = schedule.to_dict()
    run = frozen_run(ledger, args.replan)
    plan = build_plan(run.inventory, run.plan.mode, slots=schedule.slots())
    note = (f"replanned at +{_hm(result.now_min)} keeping {len(result.fixed)} started locations"
            + (f"; without {', '.join(args.without)}" if args.without else ""))
    version = ledger.new_plan_version(args.replan, plan.to_dict(), run.inventory.model_dump(mode="json"),
                                      plan.digest, run.inventory.digest, note)
    reason = (f"{len(result.fixed)} started locations kept" + (f", without {', '.join(args.without)}" if args.without else "")
              + (f", crews {', '.join(result.dropped)} stopped" if result.dropped else ""))
    # the board reads the run's latest schedule on every refresh: it shows the new plan and why, at once
    data["replanned"] = {"at_min": result.now_min, "reason": reason, "plan_version": version}
    ledger.set_run_schedule(args.replan, data)
    if args.json:
        sys.stdout.write(json.dumps({**data, "replan": {"now_min": result.now_min, "fixed": len(result.fixed),
                                                         "dropped_crews": result.dropped, "plan_version": version,
                                                         "seconds": round(result.seconds, 2)}},
                                    indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        console = Console(highlight=False)
        show(console, schedule, data, itineraries(schedule), args.team)
        console.print(f"Re-solved in {result.seconds:.1f} s from +{_hm(result.now_min)}: {len(result.fixed)} started "
                      f"locations kept" + (f", crews {', '.join(result.dropped)} stopped" if result.dropped else "")
                      + f". The run's plan version {version}: resume it to follow the new slots.")
    return EXIT_DOES_NOT_FIT if args.check and not schedule.verdict.fits else 0


def risk(args, schedule, inventory, out: Path, stored) -> int:
    """`--risk N`: Monte Carlo trials of the schedule just made."""
    from bigbang.schedule.risk import simulate, write_chart

    result = simulate(schedule, inventory, args.risk, seed=args.seed)
    files = write_chart(result, schedule, out)
    if args.json:
        sys.stdout.write(json.dumps({"schedule_fits": schedule.verdict.fits, "makespan_min": schedule.makespan,
                                     "risk": result.to_dict(), "chart": {k: str(v) for k, v in files.items()}},
                                    indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        return EXIT_DOES_NOT_FIT if args.check and result.p_fit < 0.5 else 0
    console = Console(highlight=False)
    v = schedule.verdict
    console.print(f"[bold]{schedule.problem.rollout}[/] — the schedule {'fits' if v.fits else 'does not fit'} on paper: "
                  f"the last location ends {result.planned_local} (window closes {result.window_local})")
    colour = "green" if result.p_fit >= 0.9 else "yellow" if result.p_fit >= 0.5 else "red"
    console.print(f"[{colour}]probability of finishing inside the window: {result.p_fit:.1%}[/] "
                  f"({result.trials} trials, seed {result.seed})")
    console.print(f"P50 end of the weekend: {result.p50_local}   P90: {result.p90_local}   "
                  f"({schedule.problem.timezone}; plan {result.planned_local})")
    console.print(f"per trial: {result.retries_per_trial:.1f} retried attempts, "
                  f"{result.failed_devices_per_trial:.2f} devices failed after all retries; servers ready at "
                  f"+{_hm(result.servers_p50_min)} in the median trial (plan +{_hm(result.servers_planned_min)})")
    if result.late_locations:
        console.print("[bold]Locations most often late[/] (trials ending after the window): "
                      + ", ".join(f"{lid} ({n})" for lid, n in result.late_locations))
    console.print("[bold]Locations most often last[/]: " + ", ".join(f"{lid} ({n})" for lid, n in result.last_locations))
    if result.resources:
        console.print("[bold]What most often makes it late[/] (trials ending after the plan): "
                      + "; ".join(f"{r} ({n})" for r, n in result.resources))
    console.print(f"Chart: {files.get('png', files['svg'])} (and {files['svg'].name})")
    if stored:
        console.print(f"Stored: {stored}")
    return EXIT_DOES_NOT_FIT if args.check and result.p_fit < 0.5 else 0


def _default_out(rollout: str) -> Path:
    import re

    from bigbang.report import reports_dir

    return reports_dir() / ("schedule-" + re.sub(r"[^a-z0-9]+", "-", rollout.lower()).strip("-"))


def _local(data: dict, offset_s: float) -> str:
    from datetime import datetime, timedelta

    start = datetime.fromisoformat(data["window"]["start"])
    return f"{(start + timedelta(seconds=offset_s)).astimezone(start.tzinfo):%a %H:%M}"


def _hm(minutes: float | None) -> str:
    if minutes is None:
        return "–"
    m = int(round(minutes))
    sign = "-" if m < 0 else ""
    return f"{sign}{abs(m) // 60}h{abs(m) % 60:02d}"


def show(console: Console, schedule, data: dict, crews: list[dict], teams: list[str] | None) -> None:
    v = schedule.verdict
    console.print(f"[bold]{data['rollout']}[/] — window {data['window']['start']} to {data['window']['end']}")
    console.print(("[green]" if v.fits else "[red]") + v.summary + "[/]")
    for line in v.details[1:] if not v.fits else []:
        console.print(f"  • {line}")
    if v.fits and data.get("splits"):
        console.print(f"[bold]Split into visits ({len(data['splits'])} locations):[/]")
        for split in data["splits"]:
            visits = data["slots"].get(split["location"], {}).get("visits", [])
            when = ", ".join(f"{_local(data, x['offset_s'])}–{_local(data, x['end_s'])} {x['crew_id']}" for x in visits)
            console.print(f"  • {split['because']}" + (f": {when}" if when else ""))
    people = schedule.problem.people_notes
    if v.fits and people:
        console.print("[bold]Shifts cut for rest or maximum working time:[/]")
        for line in people:
            console.print(f"  • {line}")
    if v.remedies:
        console.print("[bold]What would make it fit:[/]")
        for line in v.remedies:
            console.print(f"  • {line}")
    console.print(f"makespan +{_hm(data['makespan_min'])} ({data['makespan_end']}), lower bound "
                  f"+{_hm(data['lower_bound_min'])}, ratio {data['ratio']:.3f}; {data['solve']['method']}"
                  + (f", CP-SAT {data['solve']['solver_status']}" if "solver_status" in data["solve"] else ""))
    bounds = Table(title="Lower bounds (no schedule can end earlier)", title_justify="left")
    for col in ("bound", "ends", "because"):
        bounds.add_column(col)
    for b in data["bounds"]:
        bounds.add_row(b["name"], "+" + _hm(b["minutes"]), b["because"])
    console.print(bounds)
    known = {c["team"] for c in crews}
    unknown = set(teams or []) - known
    if unknown:
        raise UserError(f"unknown team {', '.join(sorted(unknown))}", hint="known: " + ", ".join(sorted(known)))
    shown = [c for c in crews if not teams or c["team"] in teams]
    if not teams and sum(len(c["stops"]) for c in crews) > 60:
        table = Table(title="Crews", title_justify="left")
        for col in ("crew", "locations", "first", "last ends", "on site", "travel"):
            table.add_column(col)
        for c in crews:
            stops = c["stops"]
            table.add_row(c["crew"], str(len(stops)), stops[0]["arrive"] if stops else "–",
                          stops[-1]["leave"] if stops else "–", _hm(c["busy_min"]), _hm(c["travel_min"]))
        console.print(table)
        console.print("Itineraries: --team ID, the HTML page, or --json.")
        return
    for c in shown:
        table = Table(title=f"Crew {c['crew']}: {len(c['stops'])} locations", title_justify="left")
        for col in ("arrive", "leave", "location", "address", "devices", "access hours", "travel"):
            table.add_column(col)
        for s in c["stops"]:
            style = "red" if s["late"] else None
            table.add_row(s["arrive"], s["leave"], f"{s['location']} {s['name']}", s["address"],
                          str(s["devices"]), s["access_hours"],
                          f"{s['travel_min']} min" + (f"; {s['breaks']}" if s.get("breaks") else ""), style=style)
        console.print(table)
    if data["unscheduled"]:
        console.print(f"[red]Not scheduled:[/] {', '.join(data['unscheduled'])}")


def compare(args) -> int:
    from bigbang.schedule.compare import compare_run
    from bigbang.store.ledger import Ledger

    result = compare_run(Ledger(args.ledger), args.target, args.tolerance)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=1, sort_keys=True) + "\n")
        return 0
    console = Console(highlight=False)
    clock = "simulated" if result["clock"] == "simulated" else "real"
    table = Table(title=f"{result['run_id']}: planned vs actual ({clock} time after the start; "
                        f"slips over {result['tolerance_min']:g} min flagged)", title_justify="left")
    for col in ("location", "crew", "planned", "actual", "start slip", "end slip", "status", "flags"):
        table.add_column(col)
    for r in result["locations"]:
        table.add_row(r["location"], r["crew"], f"+{_hm(r['planned_start_min'])}–+{_hm(r['planned_end_min'])}",
                      f"+{_hm(r['actual_start_min'])}–+{_hm(r['actual_end_min'])}", _hm(r["start_slip_min"]),
                      _hm(r["end_slip_min"]), r["status"], ", ".join(r["flags"]),
                      style="red" if r["flags"] else None)
    console.print(table)
    console.print(f"{result['slipped']} of {len(result['locations'])} locations slipped; planned end "
                  f"+{_hm(result['planned_makespan_min'])}, actual +{_hm(result['actual_makespan_min'])}")
    return 0


def checkin(args) -> int:
    import secrets

    from bigbang.commands.on_behalf import shell_actor
    from bigbang.session import frozen_run
    from bigbang.store.field import FieldStore
    from bigbang.store.ledger import Ledger

    if not args.location or not args.by:
        raise UserError("usage: bigbang schedule checkin RUN_ID LOCATION --by PERSON [--lead OPS_LEAD]")
    ledger = Ledger(args.ledger)
    inventory = frozen_run(ledger, args.target).inventory
    known = inventory.location_by_id
    if args.location not in known:
        raise UserError(f"run {args.target} has no location {args.location}",
                        hint="known: " + ", ".join(sorted(known)[:10]) + (" ..." if len(known) > 10 else ""))
    actor = shell_actor(inventory, args.location, args.by, args.lead)  # anyone could type --by: a lead vouches
    done = FieldStore(ledger).check_in(args.target, args.location, actor, secrets.token_urlsafe(12))
    Console(highlight=False).print(f"{args.location} checked in by {actor.id}" if done
                                   else f"{args.location} was checked in already")
    return 0


def deployment(args) -> int:
    from bigbang.inventory import load_inventory
    from bigbang.schedule.deployment import deployment_schedule, deployment_yaml

    inventory = load_inventory(args.target)
    if args.json:
        sys.stdout.write(json.dumps(deployment_schedule(inventory, args.run_id), indent=1) + "\n")
    else:
        sys.stdout.write(deployment_yaml(inventory, args.run_id))
    return 0
