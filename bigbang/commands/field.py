"""Field commands: printable checklists, the field app, and check-off / sign-off / problems from a shell."""

from __future__ import annotations

import getpass
import secrets
import sys
from pathlib import Path

from rich.console import Console

from bigbang.cli import port_number
from bigbang.commands.on_behalf import add_lead_option, shell_actor
from bigbang.errors import ConfigError, RunError, UserError

MIN_PASSWORD = 12


def register(sub) -> None:
    p = sub.add_parser("checklists", help="print-ready checklists per location (HTML and PDF)")
    p.add_argument("path", help="inventory file or directory")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write <location>.html/.pdf")
    p.add_argument("--lang", default="en", help="language of the texts (en, da, sv, nb, nn)")
    p.add_argument("--url", metavar="BASE_URL", help="the field app's address, for the QR codes per location "
                                                     "(technicians) and per desk (end users' reports; "
                                                     "default: $BIGBANG_FIELD_URL, else rollout.field_url)")
    p.add_argument("--run", metavar="RUN_ID", help="include the run's live state (check-offs, step results)")
    p.add_argument("--ledger", metavar="URL")
    p.add_argument("--location", action="append", metavar="ID", help="only this location (repeatable)")
    p.add_argument("--no-pdf", action="store_true", help="HTML only")
    p.set_defaults(func=checklists)

    s = sub.add_parser("serve", help="start the field app for technicians and the ops-lead board")
    s.add_argument("path", help="inventory file or directory")
    s.add_argument("--run", metavar="RUN_ID", help="the run to show (default: the inventory's newest run)")
    s.add_argument("--ledger", metavar="URL")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port_number, default=8000)
    s.add_argument("--lang", default="en", help="default language (each user can switch)")
    s.add_argument("--url", metavar="BASE_URL", help="public address of the app, for QR codes in PDFs "
                                                            "(default: rollout.field_url, else the request's)")
    s.add_argument("--session-hours", type=float, default=12.0, help="sign-in lasts this long")
    s.add_argument("--secure-cookies", action="store_true", help="behind HTTPS: send cookies over HTTPS only")
    s.add_argument("--idle-minutes", type=float, default=120.0,
                   help="a session ends after this long without a request (default: 120)")
    s.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (chain) file")
    s.add_argument("--tls-key", metavar="PEM", help="the certificate's private key file")
    s.add_argument("--trust-proxy", metavar="ADDRESS", action="append",
                   help="a reverse proxy's address whose X-Forwarded-For/-Proto are believed (repeatable); "
                        "without it proxy headers are ignored")
    s.set_defaults(func=serve)

    c = sub.add_parser("check", help="check off one checklist item (without the app)")
    c.add_argument("location")
    c.add_argument("item", help="e.g. hst-ws-101.cabled or location.arrive (see `bigbang checklists`)")
    _run_args(c)
    c.add_argument("--value", help="the typed serial, for *.serial items")
    c.add_argument("--undo", action="store_true", help="uncheck it")
    c.set_defaults(func=check)

    o = sub.add_parser("signoff", help="sign a location off: releases its gate in the run")
    o.add_argument("location")
    _run_args(o)
    o.add_argument("--note", default="")
    o.add_argument("--force", action="store_true", help="sign off even though the location's work is not finished")
    o.set_defaults(func=signoff)

    q = sub.add_parser("problem", help="note a problem at a location (becomes a defect)")
    q.add_argument("location")
    _run_args(q)
    q.add_argument("--category", required=True)
    q.add_argument("--text", required=True)
    q.add_argument("--device", help="hostname of the device concerned")
    q.set_defaults(func=problem)

    h = sub.add_parser("hash-password", help="make a password_hash for the inventory (reads the password)")
    h.set_defaults(func=hash_password)


def _run_args(p) -> None:
    p.add_argument("--run", required=True, metavar="RUN_ID")
    p.add_argument("--by", required=True, metavar="PERSON", help="technician or staff id from the inventory")
    add_lead_option(p)
    p.add_argument("--ledger", metavar="URL")
    p.add_argument("--key", help="request key (idempotency); repeat a command with the same key to retry it safely")


# ---------------------------------------------------------------- printing

def checklists(args) -> int:
    from bigbang.checklists import default_base_url, languages, write_checklists
    from bigbang.inventory import load_inventory
    from bigbang.session import frozen_run, inventory_plan
    from bigbang.store.ledger import Ledger

    if args.lang not in languages():
        raise ConfigError(f"no translation '{args.lang}'", hint="available: " + ", ".join(languages()))
    ledger = Ledger(args.ledger) if args.run else None
    if ledger is not None:  # a run's checklists follow its frozen plan
        from bigbang.run_ids import resolve_run_id

        args.run = resolve_run_id(ledger, args.run)
        run = frozen_run(ledger, args.run)
        inventory, plan = run.inventory, run.plan
    else:
        inventory = load_inventory(args.path)
        plan = inventory_plan(inventory, args.path)
    unknown = [lid for lid in args.location or [] if lid not in inventory.location_by_id]
    if unknown:
        raise UserError(f"unknown location {unknown[0]}", hint="locations: " + ", ".join(inventory.location_by_id))
    files = write_checklists(inventory, plan, Path(args.out), lang=args.lang,
                             base_url=args.url or default_base_url(inventory), ledger=ledger, run_id=args.run,
                             pdf=not args.no_pdf, only=args.location)
    out = Console(highlight=False)
    for f in files:
        out.print(f"{f.location_id}: {f.html}" + (f" {f.pdf}" if f.pdf else ""))
    return 0


def serve(args) -> int:
    import uvicorn

    from bigbang.web.app import create_app
    from bigbang.web.security import plain_http_warning

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    for path in filter(None, (args.tls_cert, args.tls_key)):
        if not Path(path).is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    tls = bool(args.tls_cert)
    app = create_app(args.path, args.ledger, args.run, lang=args.lang, base_url=args.url,
                     session_hours=args.session_hours, secure_cookies=args.secure_cookies or tls,
                     idle_minutes=args.idle_minutes)
    err = Console(stderr=True, highlight=False)
    warning = plain_http_warning(args.host, tls)
    if warning:
        err.print(f"[bold red]{warning}[/]")
    err.print(f"Field app on {'https' if tls else 'http'}://{args.host}:{args.port}"
              + (f" (proxy headers from {', '.join(args.trust_proxy)})" if args.trust_proxy else ""))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                proxy_headers=bool(args.trust_proxy), forwarded_allow_ips=",".join(args.trust_proxy or []) or None,
                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    return 0


# ---------------------------------------------------------------- changes from a shell

def _context(args):
    """(inventory, plan, ledger, store, actor) for a run, checking the location and the person."""
    from bigbang.run_ids import resolve_run_id
    from bigbang.session import frozen_run
    from bigbang.store.field import FieldStore
    from bigbang.store.ledger import Ledger

    ledger = Ledger(args.ledger)
    args.run = resolve_run_id(ledger, args.run)
    run = frozen_run(ledger, args.run)  # the run's own plan and inventory, whatever the YAML says now
    inventory = run.inventory
    if args.location not in inventory.location_by_id:
        raise UserError(f"unknown location {args.location}",
                        hint="locations: " + ", ".join(inventory.location_by_id))
    actor = shell_actor(inventory, args.location, args.by, args.lead)
    return inventory, run.plan, ledger, FieldStore(ledger), actor


def _key(args) -> str:
    return args.key or secrets.token_urlsafe(12)


def check(args) -> int:
    from bigbang.checklists import item_ids

    inventory, _, _, store, actor = _context(args)
    items = item_ids(inventory.location_by_id[args.location])
    if args.item not in items:
        raise UserError(f"no item '{args.item}' at {args.location}", hint="items: " + ", ".join(items[:12]) + " ...")
    if args.item.endswith(".serial") and not args.undo and not args.value:
        raise UserError("a serial item needs --value SERIAL (the serial you scanned or read)")
    done = store.set_check(args.run, args.location, args.item, not args.undo, actor, _key(args), value=args.value)
    Console(highlight=False).print(f"{args.location} {args.item}: {'unchecked' if args.undo else 'checked'}"
                                   + ("" if done else " (already recorded)"))
    return 0


def signoff(args) -> int:
    from bigbang.checklists import build_checklist

    inventory, plan, ledger, store, actor = _context(args)
    checklist = build_checklist(inventory, plan, args.location, ledger=ledger, run_id=args.run)
    if checklist.signoff is None and checklist.status in ("planned", "in_progress") and not args.force:
        raise RunError(f"{args.location}'s work is not finished yet ({checklist.status.replace('_', ' ')})",
                       hint="sign off when it waits for sign-off, or add --force")
    open_items, failed_devices = checklist.open_work
    if checklist.signoff is None and (open_items or failed_devices) and not (args.note or "").strip():
        raise UserError(f"{args.location}: {open_items} item{'' if open_items == 1 else 's'} not ticked, "
                        f"{failed_devices} device{'' if failed_devices == 1 else 's'} failed",
                        hint="give the reason to sign off anyway with --note \"...\"")
    done = store.sign_off(args.run, args.location, actor, _key(args), args.note or "",
                          open_items=open_items, failed_devices=failed_devices)
    Console(highlight=False).print(f"{args.location} signed off by {actor.id}" if done
                                   else f"{args.location} was signed off already")
    return 0


def problem(args) -> int:
    inventory, _, _, store, actor = _context(args)
    if args.device and args.device not in [d.hostname for d in inventory.location_by_id[args.location].devices]:
        raise UserError(f"no device '{args.device}' at {args.location}")
    key = _key(args)
    done = store.add_problem(args.run, args.location, args.category, args.text, actor, key, device=args.device)
    Console(highlight=False).print(f"problem {key} noted at {args.location}" + ("" if done else " (already noted)"))
    return 0


def hash_password(args) -> int:
    from bigbang.web.passwords import hash_password as make_hash

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            raise UserError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"use at least {MIN_PASSWORD} characters")
    print(make_hash(password))
    return 0

