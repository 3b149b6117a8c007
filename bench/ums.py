"""Reassign N IGEL thin clients through the IMI test server with bigbang's ums connector, then the same
work as a minimal one-device-at-a-time loop over the same HTTP library (requests).

The connector is called from `--threads` threads as the runner calls it; the loop logs in once and,
per device, looks it up, moves it, swaps the profiles, sends settings, reboots and waits for it as a
plain script would (one request per call, IMI's list endpoints with one item). Both run against a
fresh server with the same devices and the same simulated reboot time.

    python bench/ums.py [--devices 1500] [--threads 32] [--reboot 0.2] [--latency 0.002]

Prints one JSON line per measurement and one with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigbang.connectors.base import Action, ConnectorContext  # noqa: E402
from bigbang.connectors.ums import UmsSettings, create  # noqa: E402
from bigbang.secrets import resolve  # noqa: E402
from tests.peers.imi_server import ImiServer, populate, thin_client_params  # noqa: E402

DIRECTORY = "HST-001 Holstebro Rådhus"


def lab(args: argparse.Namespace) -> tuple[ImiServer, list]:
    server = ImiServer(reboot_seconds=args.reboot, latency=args.latency)
    return server, populate(server, args.devices)


def bench_connector(args: argparse.Namespace) -> dict:
    server, devices = lab(args)
    os.environ["BB_BENCH_IMI_PASSWORD"] = server.password
    settings = UmsSettings(host="127.0.0.1", port=server.port, username=server.username,
                           password={"env": "BB_BENCH_IMI_PASSWORD"}, ca_file=server.ca_file,
                           reboot_poll=args.reboot, reboot_timeout=60, max_in_flight=8, batch_window=0.05)
    conn = create(settings, ConnectorContext(run_id="bench", inventory=None, resolve_secret=resolve))
    started = time.perf_counter()

    def one(device):
        return conn.run(Action(f"{device.name}:tc.reassign", "tc.reassign", device.name, 1,
                               thin_client_params(server, device)))

    try:
        with ThreadPoolExecutor(args.threads) as pool:
            outcomes = list(pool.map(one, devices))
    finally:
        conn.close()
    wall = time.perf_counter() - started
    failed = [o.message for o in outcomes if not o.ok]
    done = sum(1 for d in devices if d.reboots == 1 and d.parent_id == server.directory(DIRECTORY))
    result = {"what": "bigbang ums connector", "devices": len(devices), "threads": args.threads,
              "wall_s": round(wall, 2), "requests": server.total_requests(),
              "requests_per_device": round(server.total_requests() / len(devices), 2), "logins": server.logins,
              "reboot_requests": server.requests["POST thinclients?command=reboot"],
              "reassigned": done, "failed": len(failed), "first_failure": failed[0] if failed else None}
    server.stop()
    return result


def bench_loop(args: argparse.Namespace) -> dict:
    """What a plain script does: one session, one device at a time, one request per call."""
    server, devices = lab(args)
    base = f"https://127.0.0.1:{server.port}/umsapi/v3/"
    http = requests.Session()
    ca = server.ca_file
    started = time.perf_counter()

    def call(method: str, path: str, **kw):
        response = http.request(method, base + path, verify=ca, timeout=30, **kw)
        response.raise_for_status()
        return response.json()

    call("POST", "login", auth=(server.username, server.password))
    profiles = {p["name"]: p["id"] for p in call("GET", "profiles")}
    new, old = profiles["igel-citrix-2026"], profiles["igel-citrix-2022"]
    directory = next((d["id"] for d in call("GET", "directories/tcdirectories") if d["name"] == DIRECTORY), None)
    if directory is None:
        directory = call("PUT", "directories/tcdirectories", json={"name": DIRECTORY})["id"]
    by_mac = {t["mac"]: t for t in call("GET", "thinclients")}  # one listing, as pyimi's Devices() makes
    for device in devices:
        tc = by_mac[thin_client_params(server, device)["mac"].replace(":", "").upper()]
        item = [{"id": tc["id"], "type": "tc"}]
        call("PUT", f"directories/tcdirectories/{directory}", params={"operation": "move"}, json=item)
        call("DELETE", f"profiles/{old}/assignments/thinclients/{tc['id']}")
        call("POST", f"profiles/{new}/assignments/thinclients/",
             json=[{"assignee": {"id": new, "type": "profile"}, "receiver": {"id": tc["id"], "type": "tc"}}])
        call("POST", "thinclients", params={"command": "settings2tc"}, json=item)
        call("POST", "thinclients", params={"command": "reboot"}, json=item)
        while not call("GET", f"thinclients/{tc['id']}", params={"facets": "online"})["online"]:
            time.sleep(args.reboot)
    wall = time.perf_counter() - started
    done = sum(1 for d in devices if d.reboots == 1 and d.parent_id == directory)
    result = {"what": "one-at-a-time loop (requests)", "devices": len(devices), "threads": 1,
              "wall_s": round(wall, 2), "requests": server.total_requests(),
              "requests_per_device": round(server.total_requests() / len(devices), 2), "logins": server.logins,
              "reassigned": done}
    server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--reboot", type=float, default=0.2, help="simulated seconds a reboot takes")
    parser.add_argument("--latency", type=float, default=0.002, help="server seconds per request (a real UMS is slower)")
    parser.add_argument("--loop-devices", type=int, default=50,
                        help="devices for the one-at-a-time loop (it is slow; its time is scaled up to --devices)")
    args = parser.parse_args()
    ours = bench_connector(args)
    print(json.dumps(ours), flush=True)
    loop_args = argparse.Namespace(**{**vars(args), "devices": min(args.loop_devices, args.devices)})
    loop = bench_loop(loop_args)
    loop["wall_s_scaled_to_devices"] = round(loop["wall_s"] * args.devices / loop["devices"], 1)
    print(json.dumps(loop), flush=True)
    print(json.dumps({"ratio_wall": round(loop["wall_s_scaled_to_devices"] / ours["wall_s"], 1),
                      "ratio_requests_per_device": round(loop["requests_per_device"] / ours["requests_per_device"], 1)}))


if __name__ == "__main__":
    main()
