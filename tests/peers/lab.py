"""A small municipality on one machine, for the live weekend: `python -m tests.peers.lab`.

    root namespace (ops): bridge bbl<N>-br, 10.250.0.1/16; vcsim (two datacenters), a Citrix Hypervisor
                          pool (the XenAPI test server: master and member), IGEL UMS (the IMI test
                          server, managing the first location's thin clients), PostgreSQL, a Prefect
                          server, the field app, all on 127.0.0.1 (127.0.<n>.1/.2 for the pool's hosts)
    one namespace per worker machine (`Lab.worker_host`, veth into the bridge, 10.250.0.<n>): a region's
                          process worker; the ops centre's Prefect server and ledger reach it through a
                          forwarder on its own 127.0.0.1 (what the VPN to the ops centre gives a worker)
    one network namespace per location (veth into the bridge): its thin clients (a real sshd each)
                          and workstations (WS-Man hosts), each on its own 10.250.<location>.<n> address

Everything bigbang talks to at a location is reached over the location's veth, so tc/netem on it, or
taking it down, is what a slow or cut-off site link does. Needs root (ip netns); `Lab.stop` removes every
namespace, link and process it made. Addresses stay inside 10.250.0.0/16 on links of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.peers.imi_server import Device as UmsDevice
from tests.peers.imi_server import ImiServer
from tests.peers.sshd import LabHost, ThinClientLab
from tests.peers.wsman_server import COMMANDS_DIR, WsmanHost, WsmanLab, _make_certificates
from tests.peers.xenapi_server import PASSWORD as XEN_PASSWORD
from tests.peers.xenapi_server import PASSWORD_ENV as XEN_PASSWORD_ENV
from tests.peers.xenapi_server import XapiPool

ROOT = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
WINRM_PASSWORD_ENV = "BIGBANG_LAB_WINRM_PASSWORD"
VCENTER_PASSWORD_ENV = "BIGBANG_LAB_VCENTER_PASSWORD"
UMS_PASSWORD_ENV = "BIGBANG_LAB_UMS_PASSWORD"
XEN_POOL = "cl-ctx-01"
UMS_OLD_PROFILE, UMS_NEW_PROFILE = "igel-2021", "igel-2026"
TECH_PASSWORD = "lab-technician-pw"
REGIONS = ("nord", "syd")
DATACENTERS = ("DC-Nord", "DC-Syd")
TEMPLATES = {"DC-Nord": "tpl-rhel9", "DC-Syd": "tpl-rhel9-syd"}


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


@contextlib.contextmanager
def netns(name: str | None) -> Iterator[None]:
    """Run this thread (and the processes and sockets it creates) inside network namespace `name`."""
    if name is None:
        yield
        return
    own = open(f"/proc/self/task/{threading.get_native_id()}/ns/net")  # noqa: SIM115 - closed below
    target = open(f"/var/run/netns/{name}")  # noqa: SIM115
    try:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            _libc.setns(own.fileno(), CLONE_NEWNET)
    finally:
        own.close()
        target.close()


@dataclass
class Site:
    """One location: its namespace, the root side of its link, its hosts."""

    index: int
    id: str
    ns: str
    link: str  # the veth end in the root namespace (netem and cut-offs act on it)
    region: str
    team: str
    thin_clients: list[LabHost] = field(default_factory=list)
    workstations: list[WsmanHost] = field(default_factory=list)
    ums_thin_clients: list[UmsDevice] = field(default_factory=list)  # thin clients managed through UMS instead

    @property
    def subnet(self) -> str:
        return f"10.250.{self.index}"


class NsThinClientLab(ThinClientLab):
    """sshd hosts each started inside its location's namespace (also when the lab reboots them)."""

    def __init__(self, ns_of: dict[str, str]) -> None:
        super().__init__()
        self.ns_of = ns_of

    def _start(self, host: LabHost) -> None:
        with netns(self.ns_of.get(host.address)):
            super()._start(host)

    def _wait_ready(self, host: LabHost, timeout: float = 15.0) -> None:
        with netns(self.ns_of.get(host.address)):
            super()._wait_ready(host, timeout)

    def add_at(self, name: str, address: str, **options: Any) -> LabHost:
        host = self._make_host(name, address, known=True, **options)
        self._start(host)
        self._wait_ready(host)
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="sshlab-watch", daemon=True)
            self._watcher.start()
        return host


class NsWsmanLab(WsmanLab):
    """WS-Man hosts whose listening sockets live in their location's namespace."""

    def __init__(self, ns_of: dict[str, str], addresses: list[str], **kw: Any) -> None:
        super().__init__(scheme="https", **kw)
        self.ns_of = ns_of
        self.never_image: set[str] = set()  # hosts whose imaging never finishes (PXE boot hangs)
        import ssl

        self.ca_file, cert, key = _make_certificates(self.dir, addresses)
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.load_cert_chain(cert, key)

    def add_at(self, name: str, address: str, *, mac: str | None = None, powered: bool = True,
               **state: str) -> WsmanHost:
        host = WsmanHost(name, address, self.dir / "hosts" / name, mac=mac.lower() if mac else None)
        host.state.mkdir(parents=True)
        for key, value in state.items():
            (host.state / key).write_text(value + "\n")
        self.hosts[name] = host
        if powered:
            self.power_on(host)
        return host

    def power_on(self, host: WsmanHost) -> None:
        with netns(self.ns_of.get(host.address)):
            super().power_on(host)

    def _image(self, host: WsmanHost) -> None:
        if host.name not in self.never_image:
            super()._image(host)


class LoopbackForwarder:
    """Makes TCP ports of the root namespace's 127.0.0.1 reachable at the same 127.0.0.1 ports inside other
    namespaces: each listener is opened inside its namespace, each connection it accepts is relayed to the
    root namespace's loopback (the threads here run there)."""

    def __init__(self) -> None:
        self.listeners: list[socket.socket] = []

    def add(self, ns: str, port: int) -> None:
        with netns(ns):
            listener = socket.create_server(("127.0.0.1", port))
        self.listeners.append(listener)
        threading.Thread(target=self._accept, args=(listener, port), daemon=True, name=f"fwd-{ns}-{port}").start()

    def _accept(self, listener: socket.socket, port: int) -> None:
        while True:
            try:
                inside, _ = listener.accept()
            except OSError:  # closed by stop()
                return
            try:
                outside = socket.create_connection(("127.0.0.1", port), timeout=10)
                outside.settimeout(None)
            except OSError:
                inside.close()
                continue
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def stop(self) -> None:
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.close()
        self.listeners.clear()


class WorkerMachines:
    """Worker machines on one host: a network namespace each (on `bridge` at 10.250.0.<n> when given, else
    with only its loopback), the ops centre's services on the root namespace's loopback forwarded to its own
    127.0.0.1. `stop` removes them."""

    def __init__(self, prefix: str, bridge: str | None = None) -> None:
        self.prefix, self.bridge = prefix, bridge
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.forwarder = LoopbackForwarder()

    def add(self, ops_ports: list[int]) -> str:
        n = len(self.namespaces) + 2
        ns = f"{self.prefix}-W{n}"
        ip("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        ip("ip", "link", "set", "lo", "up", ns=ns)
        if self.bridge:
            outside = f"{self.prefix}-w{n}"
            ip("ip", "link", "add", outside, "type", "veth", "peer", "name", f"{self.prefix}-q{n}")
            self.links.append(outside)
            ip("ip", "link", "set", f"{self.prefix}-q{n}", "netns", ns)
            ip("ip", "link", "set", f"{self.prefix}-q{n}", "name", "eth0", ns=ns)
            ip("ip", "link", "set", outside, "master", self.bridge)
            ip("ip", "link", "set", outside, "up")
            ip("ip", "addr", "add", f"10.250.0.{n}/16", "dev", "eth0", ns=ns)
            ip("ip", "link", "set", "eth0", "up", ns=ns)
        for port in ops_ports:
            self.forwarder.add(ns, port)
        return ns

    def stop(self) -> None:
        self.forwarder.stop()
        for link in self.links:
            ip("ip", "link", "del", link, check=False)
        for ns in self.namespaces:
            ip("ip", "netns", "del", ns, check=False)
        self.links.clear()
        self.namespaces.clear()


class Lab:
    """Namespaces, hosts and the inventory; the engine (vcsim, PostgreSQL, Prefect) is started by `engine`."""

    def __init__(self, locations: int = 6, workstations: int = 4, thin_clients: int = 6, servers: int = 20,
                 *, citrix_servers: int = 4, ums_locations: int = 1, tag: int | None = None, never_returns: int = 1,
                 never_images: int = 1) -> None:
        self.tag = tag if tag is not None else os.getpid() % 100
        self.prefix = f"bbl{self.tag}"
        self.bridge = f"{self.prefix}-br"
        self.sites: list[Site] = []
        self.servers = servers
        self.citrix_servers = citrix_servers
        self.ums_locations = ums_locations
        self.ns_of: dict[str, str] = {}
        self.machines = WorkerMachines(self.prefix, self.bridge)
        self._made: list[tuple[str, str]] = []  # ("ns"|"link", name) to remove
        self.dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bigbang-lab-{self.tag}-{os.getpid()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self._network(locations)
            self.ssh = NsThinClientLab(self.ns_of)
            addresses = [a for a in self._addresses(workstations, thin_clients)] + ["10.250.0.1"]
            self.win = NsWsmanLab(self.ns_of, addresses, image_delay=0.5, subnet=60 + self.tag % 50)
            self.win.start_wol_listener()
            self.deployment = self.win.add_at("mdt01", "10.250.0.1")  # the deployment server, ops side
            (self.dir / "xapi").mkdir(exist_ok=True)
            self.xen = XapiPool(XEN_POOL, subnet=160 + self.tag % 50, directory=self.dir / "xapi")
            self.ums = ImiServer(reboot_seconds=1.0)
            self.ums.add_profile(UMS_OLD_PROFILE)
            self.ums.add_profile(UMS_NEW_PROFILE, firmware_update="2")  # firmware 2 is 12.6.1
            self._hosts(workstations, thin_clients, never_returns)
            for site in self.sites[len(self.sites) - 1 - never_images:len(self.sites) - 1]:
                self.win.never_image.add(site.workstations[-1].name)  # the last workstation of the site before
        except BaseException:
            self.stop()
            raise
        self.build_seconds = time.monotonic() - started

    # ------------------------------------------------------------ network
    def _network(self, count: int) -> None:
        ip("ip", "link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", self.bridge))
        ip("ip", "addr", "add", "10.250.0.1/16", "dev", self.bridge)
        ip("ip", "link", "set", self.bridge, "up")
        for i in range(1, count + 1):
            ns, outside = f"{self.prefix}-L{i}", f"{self.prefix}-v{i}"
            ip("ip", "netns", "add", ns)
            self._made.append(("ns", ns))
            ip("ip", "link", "add", outside, "type", "veth", "peer", "name", f"{self.prefix}-p{i}")
            self._made.append(("link", outside))
            ip("ip", "link", "set", f"{self.prefix}-p{i}", "netns", ns)
            ip("ip", "link", "set", f"{self.prefix}-p{i}", "name", "eth0", ns=ns)
            ip("ip", "link", "set", outside, "master", self.bridge)
            ip("ip", "link", "set", outside, "up")
            ip("ip", "link", "set", "lo", "up", ns=ns)
            ip("ip", "link", "set", "eth0", "up", ns=ns)
            region = REGIONS[(i - 1) % len(REGIONS)]
            self.sites.append(Site(i, f"LAB-{i:02d}", ns, outside, region, f"team-{region}"))

    def worker_host(self, name: str, ops_ports: list[int]) -> str:
        """A worker machine: its own namespace on the bridge (10.250.0.<n>), with the ops centre's services on
        `ops_ports` of the root namespace's loopback (and the lab's UMS) forwarded to its 127.0.0.1. Returns the
        namespace, for `ip netns exec NS ...`."""
        return self.machines.add([*ops_ports, self.ums.port])

    def _addresses(self, workstations: int, thin_clients: int) -> list[str]:
        out = []
        for site in self.sites:
            for n in range(1, workstations + thin_clients + 1):
                address = f"{site.subnet}.{10 + n}"
                self.ns_of[address] = site.ns
                ip("ip", "addr", "add", f"{address}/16", "dev", "eth0", ns=site.ns)
                out.append(address)
        return out

    def _hosts(self, workstations: int, thin_clients: int, never_returns: int) -> None:
        stuck = 0
        for site in self.sites:
            for n in range(1, workstations + 1):
                site.workstations.append(self.win.add_at(
                    f"l{site.index}-ws{n}", f"{site.subnet}.{10 + n}", mac=f"02:50:{site.index:02x}:00:00:{n:02x}",
                    powered=False, image_version="10.0.19045.1", hostname=f"old-l{site.index}-ws{n}", domain=""))
            if site.index <= self.ums_locations:
                site.ums_thin_clients = [
                    self.ums.add_device(self._thin_client_mac(site, n), f"l{site.index}-tc{n}", profile=UMS_OLD_PROFILE)
                    for n in range(1, thin_clients + 1)]
                continue
            for n in range(1, thin_clients + 1):
                never = stuck < never_returns and site.index == len(self.sites) and n == thin_clients
                stuck += never
                site.thin_clients.append(self.ssh.add_at(
                    f"l{site.index}-tc{n}", f"{site.subnet}.{10 + workstations + n}", never_returns=never))

    @staticmethod
    def _thin_client_mac(site: Site, n: int) -> str:
        return f"00:e0:c5:{site.index:02x}:00:{n:02x}"

    # ------------------------------------------------------------ faults
    def netem(self, site: Site, spec: str = "delay 300ms loss 5%", fallback_rate: str = "512kbit") -> str:
        """Latency and loss on the location's link, both directions; returns what was applied. Where the kernel
        has no netem (sch_netem), the link is throttled with htb to `fallback_rate` instead (slow, not
        delayed) and the loss is made by iptables' statistic match inside the location's namespace, in and
        out; the return value says so."""
        applied = []
        for dev, ns in ((site.link, None), ("eth0", site.ns)):
            done = ip("tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split(), ns=ns, check=False)
            if done.returncode == 0:
                applied.append(f"netem {spec}")
                continue
            ip("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10", ns=ns)
            ip("tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", fallback_rate,
               "ceil", fallback_rate, ns=ns)
            applied.append(f"htb {fallback_rate} (no netem in this kernel: {done.stderr.strip()})")
        loss = re.search(r"\bloss (\d+(?:\.\d+)?)%", spec)
        if loss and not any(a.startswith("netem") for a in applied):
            for chain in ("INPUT", "OUTPUT"):
                ip("iptables", "-A", chain, "-m", "statistic", "--mode", "random", "--probability",
                   str(float(loss.group(1)) / 100), "-j", "DROP", ns=site.ns)
            applied.append(f"{loss.group(1)}% loss each way (iptables statistic)")
        return "; ".join(sorted(set(applied)))

    def cut(self, site: Site, seconds: float) -> threading.Timer:
        """Take the location's link down now and up again after `seconds`."""
        ip("ip", "link", "set", site.link, "down")
        timer = threading.Timer(seconds, lambda: ip("ip", "link", "set", site.link, "up", check=False))
        timer.daemon = True
        timer.start()
        return timer

    # ------------------------------------------------------------ the inventory
    def inventory(self, vcenter: dict[str, Any], *, reboot_timeout: float = 8) -> dict[str, Any]:
        from bigbang.web.passwords import hash_password

        tech_hash = hash_password(TECH_PASSWORD)  # at the cost validation asks for
        servers = []
        for i in range(self.servers):
            dc = DATACENTERS[i % 2]
            entry: dict[str, Any] = {"name": f"lab-srv{i + 1:02d}", "template": TEMPLATES[dc], "datacenter": dc,
                                     "cluster": "cl-prod-01" if i % 3 else "cl-prod-02", "datastore": "ds-ssd-01",
                                     "network": "vlan110-servers", "cpu": 2, "memory_gb": 4,
                                     "customization": {"os": "linux"}}
            if i >= 4:
                entry["depends_on"] = [f"lab-srv{(i % 4) + 1:02d}"]
            servers.append(entry)
        for i in range(self.citrix_servers):  # the Citrix estate: on the pool, through XenAPI
            servers.append({"name": f"lab-ctx{i + 1:02d}", "platform": "citrix", "template": "tpl-rhel9",
                            "cluster": XEN_POOL, "datastore": "ds-ssd-01", "network": "vlan120-citrix",
                            "cpu": 2 + i % 2, "memory_gb": 4 + 2 * (i % 2), "customization": {"os": "linux"}})
        locations = []
        for site in self.sites:
            locations.append({
                "id": site.id, "name": f"Lab site {site.index}", "address": f"Labvej {site.index}",
                "team": site.team, "region": site.region, "requires": [f"lab-srv{site.index:02d}"],
                "network": {"broadcast": "10.250.255.255"},
                "workstations": [{"hostname": f"l{site.index}-old-ws{n}", "serial": f"SN-L{site.index}-{n}",
                                  "mac": ws.mac, "model": "M70q", "target_image": "win11", "baseline": "std",
                                  "domain": "ad.lab.dk", "new_hostname": f"l{site.index}-ws-{n:02d}",
                                  "address": ws.address}
                                 for n, ws in enumerate(site.workstations, start=1)],
                "thin_clients": [{"hostname": f"l{site.index}-old-tc{n}", "mac": self._thin_client_mac(site, n),
                                  "target_profile": UMS_NEW_PROFILE, "address": tc.address}
                                 for n, tc in enumerate(site.thin_clients, start=1)]
                                + [{"hostname": f"l{site.index}-old-tc{n}", "mac": self._thin_client_mac(site, n),
                                    "target_profile": UMS_NEW_PROFILE, "current_profile": UMS_OLD_PROFILE,
                                    "connector": "ums"}
                                   for n in range(1, len(site.ums_thin_clients) + 1)],
            })
        if self.citrix_servers:
            locations[0]["requires"].append("lab-ctx01")  # its Citrix desktops run on the pool
        return {
            "rollout": {
                "name": "Lab Big Bang",
                "window": {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00", "timezone": "Europe/Copenhagen"},
                "images": {"win11": {"version": "10.0.26100.2314"}},
                "thin_client_profiles": {UMS_NEW_PROFILE: {
                    "firmware": "12.6.1", "storefront_url": "https://storefront.lab/Citrix/Store",
                    "hostname_pattern": "{location}-tc-{index:02d}", "settings": {"keyboard": "da"}}},
                "baselines": {"std": {"packages": ["Microsoft 365 Apps 2411"]}},
                "failure_policy": {"retries": 2, "retry_delay": "1s", "max_fail_percent": 50},
                "signoff_timeout": "10m",
            },
            "teams": [{"id": f"team-{region}", "name": f"Team {region}",
                       "capacity": {"parallel_locations": 3, "parallel_devices": 10},
                       "technicians": [{"id": f"tech-{region}", "name": f"Technician {region}",
                                        "password_hash": tech_hash}]}
                      for region in REGIONS],
            "servers": servers,
            "locations": locations,
            "connectors": {
                "vsphere": vcenter,
                "xen": self.xen.settings(task_timeout=60, ip_timeout=30, poll_interval=0.2),
                "ums": {"host": "127.0.0.1", "port": self.ums.port, "username": self.ums.username,
                        "password": {"env": UMS_PASSWORD_ENV}, "ca_file": self.ums.ca_file, "reboot_poll": 0.5,
                        "reboot_timeout": 30},
                "ssh": self.ssh.ssh_settings(reboot_timeout=reboot_timeout, connect_timeout=3),
                "winrm": {"username": self.win.username, "password": {"env": WINRM_PASSWORD_ENV},
                          "transport": "basic", "port": self.win.port, "ca_bundle": self.win.ca_file,
                          "deployment_server": self.deployment.address, "operation_timeout": 5,
                          "read_timeout": 10, "image_poll": 0.2, "image_timeout": 20, "wol_port": self.win.wol_port,
                          "commands_dir": str(COMMANDS_DIR)},
            },
        }

    def write_inventory(self, path: Path, vcenter: dict[str, Any], **kw: Any) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.inventory(vcenter, **kw), allow_unicode=True, sort_keys=False))
        return path

    def env(self) -> dict[str, str]:
        return {WINRM_PASSWORD_ENV: self.win.password, XEN_PASSWORD_ENV: XEN_PASSWORD,
                UMS_PASSWORD_ENV: self.ums.password}

    # ------------------------------------------------------------ teardown
    def stop(self) -> None:
        self.machines.stop()
        for part in ("ssh", "win", "xen", "ums"):
            peer = getattr(self, part, None)
            if peer is not None:
                try:
                    peer.stop()
                except Exception:  # noqa: BLE001 - keep tearing down
                    pass
        for kind, name in reversed(self._made):
            if kind == "ns":
                ip("ip", "netns", "del", name, check=False)
            else:
                ip("ip", "link", "del", name, check=False)
        self._made.clear()


def main() -> int:
    """Build the lab and a vCenter simulator, write the inventory, print how to run the weekend; Ctrl-C ends."""
    from tests.peers.vcsim import Vcsim

    lab = Lab()
    vc = Vcsim("-datacenter", ",".join(DATACENTERS), "-templates",
               "tpl-rhel9:rhel8_64Guest,DC-Syd/tpl-rhel9-syd:rhel8_64Guest")
    try:
        path = lab.write_inventory(lab.dir / "inventory.yaml", vc.settings(datacenter=None,
                                                                           password={"env": VCENTER_PASSWORD_ENV}))
        devices = sum(len(s.thin_clients) + len(s.workstations) for s in lab.sites)
        print(f"lab up in {lab.build_seconds:.1f} s: {len(lab.sites)} locations ({devices} devices) in namespaces "
              f"{', '.join(s.ns for s in lab.sites)}; vCenter simulator {vc.url}")
        print(f"inventory: {path}\n\nexport {WINRM_PASSWORD_ENV}={lab.win.password} "
              f"{VCENTER_PASSWORD_ENV}={vc.password}\n"
              f"bigbang run {path} --mode live\n"
              f"bigbang serve {path}    # technicians: tech-nord / tech-syd, password {TECH_PASSWORD}\n\n"
              "Ctrl-C removes the lab.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        vc.stop()
        lab.stop()


if __name__ == "__main__":
    sys.exit(main())
