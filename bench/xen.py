"""Provision the Citrix share of the Holstebro estate (168 VMs on 3 pools) against the XenAPI test pool.

Prints one JSON line per measurement:
  - bigbang: wall time of prechecks + all server waves through Runner (clone or copy, vCPUs, memory,
    disks, network card, customisation, start, wait for the guest's IP), XenAPI requests per VM;
  - minimal: a minimal loop over the same SDK (`XenAPI`) doing the same work to the same VMs (clone,
    make a VM, vCPUs, memory, grow the disk, network card, xenstore_data, start, poll for the IP),
    with no checks, no idempotence and no rollback, sequential and with bigbang's parallelism;
  - ratio: our wall time over the minimal loop's.

The servers are the `platform: citrix` servers of `bigbang inventory generate --preset holstebro`
(dependencies on the VMware servers dropped). Pool cl-ctx-02 is reached through a member, so its
login follows HOST_IS_SLAVE. Usage: python bench/xen.py [--parallel 8]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import threading
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bigbang.inventory.generate import PRESETS, generate  # noqa: E402
from bigbang.runner import Runner  # noqa: E402
from bigbang.session import RunOptions, RunSession  # noqa: E402
from tests.peers.xenapi_server import PASSWORD, PASSWORD_ENV, USER, GiB, XapiPool  # noqa: E402

POOLS = ("cl-ctx-01", "cl-ctx-02", "cl-ctx-03")
SRS = {f"ds-{kind}-{i:02d}": 40_000 for kind in ("ssd", "std") for i in range(1, 5)}
TEMPLATES = {"tpl-win2022": (60, "ds-ssd-01"), "tpl-win2022-vda": (80, "ds-ssd-01")}


def citrix_servers() -> list[dict[str, Any]]:
    files = generate(PRESETS["holstebro"], seed=1)  # as `bigbang inventory generate --preset holstebro`
    servers = [s for f in files.values() if isinstance(f, dict) for s in f.get("servers") or []]
    citrix = [s for s in servers if s.get("platform") == "citrix"]
    names = {s["name"] for s in citrix}
    for s in citrix:
        s["depends_on"] = [d for d in s.get("depends_on") or [] if d in names]
        s.setdefault("customization", {})["os"] = "windows"
    return citrix


def start_pools(task_delay: float, boot_delay: float) -> dict[str, XapiPool]:
    """Three pools on their own loopback addresses, one port (bigbang's settings have one `port`)."""
    pools: dict[str, XapiPool] = {}
    for i, name in enumerate(POOLS):
        port = pools[POOLS[0]].port if pools else None
        pools[name] = XapiPool(name, subnet=71 + i, srs=SRS, templates=TEMPLATES, host_memory_gb=4096,
                               task_delay=task_delay, boot_delay=boot_delay, port=port)
    return pools


def run_bigbang(pools: dict[str, XapiPool], servers: list[dict[str, Any]], workdir: Path, parallel: int) -> dict:
    first = pools[POOLS[0]]
    ca = workdir / "pools-ca.pem"
    ca.write_text("".join(Path(p.ca_file).read_text() for p in pools.values()))
    settings = first.settings(ca_file=str(ca), ip_timeout=60, poll_interval=0.5,
                              pools={"cl-ctx-02": pools["cl-ctx-02"].member_address,
                                     "cl-ctx-03": pools["cl-ctx-03"].master_address})
    path = workdir / "inventory.yaml"
    path.write_text(yaml.safe_dump({
        "rollout": {"name": "Holstebro Citrix bench", "window": {"start": "2026-11-27T17:00",
                                                                 "end": "2026-11-30T07:00"},
                    "failure_policy": {"retries": 0, "retry_delay": 0}},
        "servers": servers, "connectors": {"xen": settings}}, sort_keys=False))
    start = time.perf_counter()
    session = RunSession.start(path, RunOptions(mode="live", parallel_servers=parallel),
                               ledger_url=f"sqlite:///{workdir / 'ledger.db'}", run_id="bench-xen")
    runner = Runner(session)
    phases = [runner.run_prechecks()] + [runner.run_wave(w) for w in range(len(session.plan.waves))]
    wall = time.perf_counter() - start
    failed = sum(len(p.failed) + len(p.skipped) for p in phases)
    reasons = sorted({m for p in phases for m in p.reasons.values()})[:3]
    stats = session.connector("xen").stats()  # type: ignore[attr-defined]
    session.close()
    running = sum(1 for p in pools.values() for n in (s["name"] for s in servers)
                  if (vm := p.vm(n)) is not None and vm["power_state"] == "Running")
    return {"measurement": "bigbang", "servers": len(servers), "parallel_servers": parallel,
            "wall_s": round(wall, 2), "failed_or_skipped": failed, "example_failures": reasons,
            "running_vms_in_pools": running, "xenapi_requests": stats["calls"],
            "requests_per_vm": round(stats["calls"] / len(servers), 1), "logins": stats["logins"],
            "redirects": stats["redirects"], "peak_clones_per_sr": max(stats["sr_peaks"].values(), default=0)}


class _Counting(xmlrpc.client.SafeTransport):
    count = 0
    lock = threading.Lock()

    def request(self, *args: Any, **kwargs: Any) -> Any:
        with _Counting.lock:
            _Counting.count += 1
        return super().request(*args, **kwargs)


def run_minimal(pools: dict[str, XapiPool], servers: list[dict[str, Any]], threads: int, prefix: str) -> dict:
    """What a minimal script does with the SDK: the same calls per VM, polling every 50 ms, no checks."""
    import XenAPI

    local = threading.local()
    sessions: list[Any] = []
    lock = threading.Lock()

    def api(pool: XapiPool) -> Any:
        cache = local.__dict__.setdefault("sessions", {})
        if pool.name not in cache:
            context = ssl.create_default_context(cafile=pool.ca_file)
            session = XenAPI.Session(f"https://{pool.master_address}:{pool.port}/",
                                     transport=_Counting(context=context))
            session.login_with_password(USER, PASSWORD, "2.20", "bench")
            with lock:
                sessions.append(session)
            cache[pool.name] = session
        return cache[pool.name].xenapi

    def wait(x: Any, task: str) -> str:
        while (status := x.task.get_status(task)) == "pending":
            time.sleep(0.05)
        if status != "success":
            raise RuntimeError(f"task failed: {x.task.get_error_info(task)}")
        result = x.task.get_result(task)
        x.task.destroy(task)
        return result.replace("<value>", "").replace("</value>", "")

    def provision(spec: dict[str, Any]) -> None:
        pool = pools[spec["cluster"]]
        x = api(pool)
        template = x.VM.get_by_name_label(spec["template"])[0]
        sr = x.SR.get_by_name_label(spec["datastore"])[0]
        network = x.network.get_by_name_label(spec["network"])[0]
        name = f"{prefix}-{spec['name']}"
        if spec["datastore"] == "ds-ssd-01":
            vm = wait(x, x.Async.VM.clone(template, name))
        else:
            vm = wait(x, x.Async.VM.copy(template, name, sr))
        x.VM.set_is_a_template(vm, False)
        cpu, memory = str(spec["cpu"]), str(spec["memory_gb"] * GiB)
        x.VM.set_VCPUs_max(vm, cpu)
        x.VM.set_VCPUs_at_startup(vm, cpu)
        x.VM.set_memory_limits(vm, str(GiB), memory, memory, memory)
        vdi = x.VBD.get_VDI(x.VM.get_VBDs(vm)[0])
        wait(x, x.Async.VDI.resize(vdi, str(spec["disks_gb"][0] * GiB)))
        x.VIF.create({"device": "0", "network": network, "VM": vm, "MAC": "", "MTU": "1500", "other_config": {},
                      "qos_algorithm_type": "", "qos_algorithm_params": {}})
        ip = spec["customization"]["ip"]
        x.VM.set_xenstore_data(vm, {"vm-data/ip": ip, "vm-data/hostname": spec["name"]})
        wait(x, x.Async.VM.start(vm, False, False))
        while True:
            metrics = x.VM.get_guest_metrics(vm)
            if metrics != "OpaqueRef:NULL" and ip in x.VM_guest_metrics.get_networks(metrics).values():
                return
            time.sleep(0.05)

    _Counting.count = 0
    start = time.perf_counter()
    if threads == 1:
        for spec in servers:
            provision(spec)
    else:
        with ThreadPoolExecutor(max_workers=threads) as executor:
            list(executor.map(provision, servers))
    wall = time.perf_counter() - start
    for session in sessions:
        session.xenapi.session.logout()
    return {"measurement": "minimal_xenapi_loop", "servers": len(servers), "threads": threads,
            "wall_s": round(wall, 2), "xenapi_requests": _Counting.count,
            "requests_per_vm": round(_Counting.count / len(servers), 1), "logins": len(sessions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--task-delay", type=float, default=0.05, help="seconds each XenAPI task takes")
    parser.add_argument("--sequential", action="store_true", help="also time the minimal loop on one thread "
                                                                      "(about a minute more)")
    parser.add_argument("--boot-delay", type=float, default=0.2, help="seconds until a guest reports its IP")
    args = parser.parse_args()
    os.environ[PASSWORD_ENV] = PASSWORD
    servers = citrix_servers()
    pools = start_pools(args.task_delay, args.boot_delay)
    try:
        with tempfile.TemporaryDirectory(prefix="bigbang-bench-") as tmp:
            os.environ.setdefault("BIGBANG_HOME", tmp)
            ours = run_bigbang(pools, servers, Path(tmp), args.parallel)
        print(json.dumps(ours), flush=True)
        threaded = run_minimal(pools, servers, args.parallel, "par")
        print(json.dumps(threaded), flush=True)
        ratio = {"measurement": "ratio", "bigbang_over_minimal_threaded": round(ours["wall_s"] / threaded["wall_s"], 2)}
        if args.sequential:
            sequential = run_minimal(pools, servers, 1, "seq")
            print(json.dumps(sequential), flush=True)
            ratio["bigbang_over_minimal_sequential"] = round(ours["wall_s"] / sequential["wall_s"], 2)
        print(json.dumps({**ratio,
                          "requests_per_vm_bigbang_over_minimal": round(
                              ours["requests_per_vm"] / threaded["requests_per_vm"], 2)}), flush=True)
    finally:
        for pool in pools.values():
            pool.stop()


if __name__ == "__main__":
    main()
