"""`bigbang vcenter discover|diff`: start an inventory from what exists; compare an inventory with vCenter."""

from __future__ import annotations

import json
import sys
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
    p = sub.add_parser("vcenter", help="read servers from vCenter, or compare an inventory with it")
    vsub = p.add_subparsers(dest="vcenter_command", metavar="ACTION")
    vsub.required = True

    d = vsub.add_parser("discover", help="write the VMs vCenter has as inventory servers (YAML)")
    d.add_argument("--inventory", metavar="PATH", help="take the connection from this inventory's connectors.vsphere")
    d.add_argument("--host", help="vCenter host (instead of --inventory)")
    d.add_argument("--port", type=int, default=443)
    d.add_argument("--username", help="vCenter user name")
    d.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    d.add_argument("--ca-bundle", metavar="FILE", help="PEM file of CAs to trust")
    d.add_argument("--thumbprint", help="pinned SHA-256 certificate thumbprint")
    d.add_argument("--insecure", action="store_true", help="do not verify the certificate (labs only)")
    d.add_argument("--datacenter", help="only this datacenter")
    d.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    d.set_defaults(func=run_discover)

    f = vsub.add_parser("diff", help="what `run --mode live` would do to each server: create, reconfigure, "
                                     "already fine (like terraform plan)")
    f.add_argument("path", help="inventory file or directory (uses its connectors.vsphere)")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(func=run_diff)


# ---------------------------------------------------------------- connecting

def settings_from_inventory(inventory: Any):
    from bigbang.connectors.vsphere import VsphereSettings

    settings = inventory.connectors.get("vsphere")
    if settings is None:
        raise ConfigError("the inventory has no connectors.vsphere section",
                          hint="add host, username and password (by reference) under connectors.vsphere")
    return settings if isinstance(settings, VsphereSettings) else VsphereSettings.model_validate(settings)


def open_client(settings: Any):
    from bigbang.secrets import resolve
    from bigbang.vsphere.catalog import Catalog
    from bigbang.vsphere.client import Endpoint, VcenterClient

    endpoint = Endpoint(settings.host, settings.port, settings.ca_bundle, settings.thumbprint, settings.insecure,
                        settings.connect_timeout)

    def credentials() -> tuple[str, str]:
        return (resolve(settings.username, where="connectors.vsphere.username"),
                resolve(settings.password, where="connectors.vsphere.password"))

    client = VcenterClient(endpoint, credentials)
    return client, Catalog(client, settings.inventory_ttl)


def _vcenter_errors(fn):
    """VcenterError/PlacementError become one clear line (a UserError), never a traceback."""
    from bigbang.vsphere.catalog import PlacementError
    from bigbang.vsphere.client import VcenterError

    def wrapped(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except (VcenterError, PlacementError) as exc:
            raise RunError(str(exc)) from None

    return wrapped


# ---------------------------------------------------------------- discover

def run_discover(args) -> int:
    from bigbang.connectors.vsphere import VsphereSettings
    from bigbang.vsphere.discover import discover, to_yaml

    if args.inventory:
        settings = settings_from_inventory(load_inventory(args.inventory))
    elif args.host:
        if not args.username or not args.password_env:
            raise UserError("--host needs --username and --password-env", hint="or use --inventory PATH")
        settings = VsphereSettings.model_validate({
            "host": args.host, "port": args.port, "username": args.username, "password": {"env": args.password_env},
            "ca_bundle": args.ca_bundle, "thumbprint": args.thumbprint, "insecure": args.insecure})
    else:
        raise UserError("say which vCenter: --inventory PATH or --host HOST", hint="see `bigbang vcenter discover -h`")
    client, catalog = open_client(settings)
    try:
        servers, skipped = _vcenter_errors(discover)(client, catalog, args.datacenter or settings.datacenter)
        source = catalog.endpoint_kind()
    finally:
        client.close()
    text = to_yaml(servers, skipped, source)
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
    """An Assessment per server whose connector is vsphere, in the inventory's order."""
    from bigbang.vsphere.assess import assess

    settings = settings_from_inventory(inventory)
    client, catalog = open_client(settings)
    try:
        run = _vcenter_errors(assess)
        results = [run(client, catalog, srv.model_dump(exclude={"kind", "connector"}, mode="json"),
                       default_datacenter=settings.datacenter, drift_policy=settings.drift)
                   for srv in inventory.servers if srv.connector == "vsphere"]
        if results and catalog.data()["standalone"]:
            Console(stderr=True, highlight=False).print(
                f"{_vcenter_errors(catalog.endpoint_kind)()}: a standalone host, not vCenter; existing VMs "
                "can be changed, new ones cannot be cloned", markup=False)
        return results
    finally:
        client.close()


def show_diff(console: Console, results: list) -> None:
    table = Table(title="Servers against vCenter", title_justify="left")
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
    return diff_exit_status(results)


def diff_exit_status(results: list) -> int:
    """1 when a live run's precheck would fail on some server (an error, or drift it will not fix), else 0;
    shared by `vcenter diff` and `plan --vcenter`."""
    return 1 if any(r.action in ("error", "drift") for r in results) else 0
