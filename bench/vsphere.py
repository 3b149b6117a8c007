"""Provision a Holstebro-size server set (400 VMs) against the vCenter simulator, live mode.

Prints one JSON line per measurement:
  - bigbang: wall time of prechecks + all server waves through Runner (clone, reconfigure, customise,
    power on, verify each VM), vCenter calls per VM;
  - minimal: the same 400 clones issued by a minimal pyvmomi loop (clone, wait), sequential and with
    as many threads as bigbang's server parallelism, in the same simulator;
  - ratio: our wall time over the minimal loop's.

Usage: python bench/vsphere.py [--servers 400] [--parallel 8]   (needs scripts/setup.d/20-vcsim.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bigbang.runner import Runner
from bigbang.session import RunOptions, RunSession
from tests.peers.vcsim import PASSWORD_ENV, Vcsim

CLUSTERS = ["cl-prod-01", "cl-prod-02", "cl-lab-01"]
DATASTORES = ["ds-ssd-01", "ds-nl-01", "ds-ssd-02"]
NETWORKS = ["vlan110-servers", "vlan120-citrix"]


def inventory(sim: Vcsim, count: int, parallel_clones: int, per_datastore: int) -> dict:
    servers = []
    for i in range(count):
        name = f"hst-srv-{i:03d}"
        deps = [] if i < 4 else ([f"hst-srv-{i % 4:03d}"] if i < 40 else [f"hst-srv-{4 + i % 36:03d}"])
        linux = i % 3 == 0
        servers.append({
            "name": name, "template": "tpl-rhel9" if linux else "tpl-win2022",
            "cluster": CLUSTERS[i % 3], "datastore": DATASTORES[(i // 3) % 3], "network": NETWORKS[i % 2],
            "cpu": 2 + 2 * (i % 3), "memory_gb": 4 * (1 + i % 4), "disks_gb": [60] + ([200] if i % 5 == 0 else []),
            "depends_on": deps,
            "customization": {"os": "linux" if linux else "windows", "ip": f"10.{20 + i // 250}.{i % 250}.10",
                              "netmask": "255.255.255.0", "gateway": "10.20.0.1"},
        })
    return {
        "rollout": {"name": "Holstebro Big Bang bench", "window": {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00"},
                    "failure_policy": {"retries": 0, "retry_delay": 0}},
        "servers": servers,
        "connectors": {"vsphere": sim.settings(max_parallel_clones=parallel_clones,
                                               max_parallel_per_datastore=per_datastore, ip_timeout=60)},
    }


def run_bigbang(sim: Vcsim, workdir: Path, count: int, parallel: int) -> dict:
    path = workdir / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory(sim, count, 4, 2), sort_keys=False))
    start = time.perf_counter()
    session = RunSession.start(path, RunOptions(mode="live", parallel_servers=parallel),
                               ledger_url=f"sqlite:///{workdir / 'ledger.db'}", run_id="bench-vsphere")
    runner = Runner(session)
    phases = [runner.run_prechecks()] + [runner.run_wave(w) for w in range(len(session.plan.waves))]
    wall = time.perf_counter() - start
    failed = sum(len(p.failed) + len(p.skipped) for p in phases)
    reasons = sorted({m for p in phases for m in p.reasons.values()})[:3]
    stats = session.connector("vsphere").stats()
    session.close()
    return {"measurement": "bigbang", "servers": count, "parallel_servers": parallel, "wall_s": round(wall, 2),
            "failed_or_skipped": failed, "example_failures": reasons, "vcenter_calls": stats["calls"],
            "calls_per_vm": round(stats["calls"] / count, 1), "logins": stats["logins"],
            "peak_clones_per_cluster": stats["cluster_peaks"], "peak_clones_per_datastore": stats["datastore_peaks"]}


def run_minimal(sim: Vcsim, count: int, threads: int, prefix: str, full: bool = False) -> dict:
    """What a minimal script does: find the template, then clone and wait for each task.

    With `full`, it also does what bigbang does to each VM (reconfigure, customise, power on,
    wait for the guest's IP), polling every 50 ms like a typical script, with no checks.
    """
    from pyVmomi import vim

    si = sim.connect()
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    template = next(vm for vm in view.view if vm.name == "tpl-rhel9")
    dc = content.rootFolder.childEntity[0]
    clusters = {c.name: c for c in dc.hostFolder.childEntity}
    stores = {d.name: d for d in dc.datastore}

    def clone(i: int) -> None:
        spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=clusters[CLUSTERS[i % 3]].resourcePool,
                                                             datastore=stores[DATASTORES[(i // 3) % 3]]),
                                powerOn=False)
        task = template.CloneVM_Task(folder=dc.vmFolder, name=f"{prefix}-{i:03d}", spec=spec)
        while task.info.state not in ("success", "error"):
            time.sleep(0.05)
        if not full:
            return
        vm = task.info.result
        ip = f"10.30.{i // 250}.{i % 250 + 1}"
        steps = [
            lambda: vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(numCPUs=4, memoryMB=8192)),
            lambda: vm.CustomizeVM_Task(spec=vim.vm.customization.Specification(
                identity=vim.vm.customization.LinuxPrep(hostName=vim.vm.customization.FixedName(name=f"m{i}"),
                                                        domain="local"),
                globalIPSettings=vim.vm.customization.GlobalIPSettings(),
                nicSettingMap=[vim.vm.customization.AdapterMapping(adapter=vim.vm.customization.IPSettings(
                    ip=vim.vm.customization.FixedIp(ipAddress=ip), subnetMask="255.255.255.0"))])),
            vm.PowerOnVM_Task,
        ]
        for start in steps:
            task = start()
            while task.info.state not in ("success", "error"):
                time.sleep(0.05)
        while vm.guest.toolsRunningStatus != "guestToolsRunning" or vm.guest.ipAddress != ip:
            time.sleep(0.05)

    start = time.perf_counter()
    if threads == 1:
        for i in range(count):
            clone(i)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(clone, range(count)))
    wall = time.perf_counter() - start
    return {"measurement": "minimal_pyvmomi_" + ("full_loop" if full else "clone_loop"), "servers": count,
            "threads": threads, "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=400)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    sim = Vcsim()
    os.environ[PASSWORD_ENV] = sim.password
    try:
        with tempfile.TemporaryDirectory(prefix="bigbang-bench-") as tmp:
            os.environ.setdefault("BIGBANG_HOME", tmp)
            ours = run_bigbang(sim, Path(tmp), args.servers, args.parallel)
        print(json.dumps(ours), flush=True)
        sequential = run_minimal(sim, args.servers, 1, "min-seq")
        print(json.dumps(sequential), flush=True)
        threaded = run_minimal(sim, args.servers, args.parallel, "min-par")
        print(json.dumps(threaded), flush=True)
        full = run_minimal(sim, args.servers, args.parallel, "min-full", full=True)
        print(json.dumps(full), flush=True)
        print(json.dumps({"measurement": "ratio",
                          "bigbang_over_minimal_clone_loop": round(ours["wall_s"] / sequential["wall_s"], 2),
                          "bigbang_over_minimal_threaded_clone_loop": round(ours["wall_s"] / threaded["wall_s"], 2),
                          "bigbang_over_minimal_full_loop": round(ours["wall_s"] / full["wall_s"], 2),
                          "note": "the clone loops only clone; bigbang and the full loop also reconfigure, "
                                  "customise, power on and wait for each guest's IP"}), flush=True)
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
