"""`bigbang xen discover|diff`: start an inventory from a XenServer pool; compare an inventory with it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bigbang.errors import ConfigError, RunError, UserError
from bigbang.inventory import load_inventory

STYLE = {"create": "green", "reconfigure": "yellow", "drift": "magenta", "fine": "dim", "error": "red"}
LABEL = {"create": "create", "reconfigure": "reconfigure", "drift": "drift", "fine": "already fine",
         "error": "error"}


def register(sub) -> None:
    p = sub.add_parser("xen", help="read servers from Citrix Hypervisor (XenServer/XCP-ng) pools, or compare an "
                                   "inventory with them")
    xsub = p.add_subparsers(dest="xen_command", metavar="ACTION")
    xsub.required = True

    d = xsub.add_parser("discover", help="write the VMs of the pools as inventory servers (YAML)")
    d.add_argument("--inventory", metavar="PATH", help="take the connection from this inventory's connectors.xen "
                                                      "(every pool it names)")
    d.add_argument("--host", help="a host of the pool (instead of --inventory)")
    d.add_argument("--port", type=int, default=443)
    d.add_argument("--username", help="XenAPI user name")
    d.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    d.add_argument("--ca-file", metavar="FILE", help="PEM file of CAs to trust")
    d.add_argument("--insecure", action="store_true", help="do not verify the certificate (labs only)")
    d.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    d.set_defaults(func=run_discover)

    f = xsub.add_parser("diff", help="what `run --mode live` would do to each Citrix server: create, reconfigure, "
                                     "already fine")
    f.add_argument("path", help="inventory file or directory (uses its connectors.xen)")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(func=run_diff)


# ---------------------------------------------------------------- connecting

def settings_from_inventory(inventory: Any) -> Any:
    from bigbang.connectors.xen import XenSettings

    settings = inventory.connectors.get("xen")
    if settings is None:
        raise ConfigError("the inventory has no connectors.xen section",
                          hint="add host, username and password (by reference) under connectors.xen")
    return settings if isinstance(settings, XenSettings) else XenSettings.model_validate(settings)


def open_pool(settings: Any, address: str) -> tuple[Any, Any]:
    from bigbang.secrets import resolve
    from bigbang.xen.catalog import Catalog
    from bigbang.xen.client import Endpoint, XenClient

    def credentials() -> tuple[str, str]:
        return (resolve(settings.username, where="connectors.xen.username"),
                resolve(settings.password, where="connectors.xen.password"))

    client = XenClient(Endpoint(address, settings.port, settings.ca_file, settings.insecure,
                                settings.connect_timeout), credentials, poll_interval=settings.poll_interval)
    return client, Catalog(client, settings.inventory_ttl)


def _xen_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """XenError/PlacementError/XenAPI failures become one clear line (a UserError), never a traceback."""
    import XenAPI

    from bigbang.xen.catalog import PlacementError
    from bigbang.xen.client import XenError, failure_text

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (XenError, PlacementError) as exc:
            raise RunError(str(exc)) from None
        except XenAPI.Failure as exc:
            raise RunError(f"XenAPI: {failure_text(exc.details)}") from None

    return wrapped


# ---------------------------------------------------------------- discover

def run_discover(args) -> int:
    from bigbang.connectors.xen import XenSettings
    from bigbang.xen.discover import discover, to_yaml

    if args.inventory:
        settings = settings_from_inventory(load_inventory(args.inventory))
    elif args.host:
        if not args.username or not args.password_env:
            raise UserError("--host needs --username and --password-env", hint="or use --inventory PATH")
        settings = XenSettings.model_validate({"host": args.host, "port": args.port, "username": args.username,
                                               "password": {"env": args.password_env}, "ca_file": args.ca_file,
                                               "insecure": args.insecure})
    else:
        raise UserError("say which pool: --inventory PATH or --host HOST", hint="see `bigbang xen discover -h`")
    servers: list[dict[str, Any]] = []
    skipped: list[str] = []
    for address in dict.fromkeys([settings.host, *settings.pools.values()]):
        client, catalog = open_pool(settings, address)
        try:
            found, left_out = _xen_errors(discover)(client, catalog)
        finally:
            client.close()
        servers += found
        skipped += left_out
    text = to_yaml(servers, skipped, ", ".join(dict.fromkeys([f"{settings.host}:{settings.port}",
                                                             *settings.pools.values()])))
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror}") from None
        Console(stderr=True, highlight=False).print(
            f"wrote {len(servers)} servers to {out}" + (f" ({len(skipped)} VMs left out, see its header)"
                                                        if skipped else ""), markup=False)
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------- diff

def assess_inventory(inventory: Any) -> list:
    """An Assessment per server whose connector is xen, in the inventory's order."""
    from bigbang.xen.assess import assess

    settings = settings_from_inventory(inventory)
    pools: dict[str, tuple[Any, Any]] = {}
    results = []
    try:
        run = _xen_errors(assess)
        for srv in inventory.servers:
            if srv.connector != "xen":
                continue
            address = settings.pools.get(srv.cluster, settings.host)
            if address not in pools:
                pools[address] = open_pool(settings, address)
            client, catalog = pools[address]
            results.append(run(client, catalog, srv.model_dump(exclude={"kind", "connector"}, mode="json"),
                               drift_policy=settings.drift))
    finally:
        for client, _catalog in pools.values():
            client.close()
    return results


def show_diff(console: Console, results: list) -> None:
    table = Table(title="Servers against XenAPI", title_justify="left")
    for col in ("server", "action", "details"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, f"[{STYLE[r.action]}]{LABEL[r.action]}[/]", r.message)
    console.print(table)
    counts = {a: sum(1 for r in results if r.action == a) for a in STYLE}
    console.print(f"{counts['create']} to create, {counts['reconfigure']} to reconfigure, "
                  f"{counts['fine']} already fine, {counts['drift']} drifted, {counts['error']} errors")


def run_diff(args) -> int:
    inventory = load_inventory(args.path)
    results = assess_inventory(inventory)
    if args.json:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    else:
        show_diff(Console(), results)
    return 1 if any(r.action == "error" for r in results) else 0
