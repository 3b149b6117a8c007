"""Deterministic, realistic inventories of any size (for rehearsals, benchmarks and demos).

Presets give the two reference sizes: Holstebro (a Danish municipality: 150
locations, 2,000 workstations, 1,500 thin clients, 400 servers) and Höglandet
(a Swedish joint IT organisation: 250 locations, 10,000 computers, 400 servers).
The same arguments and seed always give the same files.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bigbang.errors import UserError

try:
    _Dumper: type = yaml.CSafeDumper
except AttributeError:  # pragma: no cover
    _Dumper = yaml.SafeDumper


@dataclass(frozen=True)
class Size:
    locations: int
    workstations: int
    thin_clients: int
    servers: int
    locale: str = "da"


PRESETS = {
    "demo": Size(3, 16, 14, 6),
    "holstebro": Size(150, 2000, 1500, 400, "da"),
    "hoglandet": Size(250, 7000, 3000, 400, "sv"),
}

LOCALES: dict[str, dict[str, Any]] = {
    "da": {
        "name": "Holstebro Kommune Big Bang 2026",
        "timezone": "Europe/Copenhagen",
        "center": (56.36, 8.62),
        "domain": "ad.holstebro.dk",
        "towns": [("Holstebro", "7500"), ("Vinderup", "7830"), ("Sevel", "7830"), ("Ulfborg", "6990"),
                  ("Vemb", "7570"), ("Idom", "7500"), ("Mejrup", "7500"), ("Tvis", "7500"), ("Hjerm", "7560"),
                  ("Sir", "7500"), ("Borbjerg", "7500"), ("Naur", "7500")],
        "streets": ["Kirkestræde", "Nørregade", "Skolegade", "Lystoftevej", "Fuglsangvej", "Birkevej", "Enghavevej",
                    "Stationsvej", "Ringvejen", "Søndergade", "Vestergade", "Østergade", "Parkvej", "Bøgevej",
                    "Holmgårdvej", "Lægårdvej", "Gl. Landevej", "Viborgvej", "Ringkøbingvej", "Herningvej"],
        "kinds": [("Rådhus", "high", 6.0), ("Skole", "normal", 3.0), ("Plejecenter", "critical", 1.2),
                  ("Børnehave", "normal", 0.6), ("Bibliotek", "normal", 1.0), ("Sundhedscenter", "high", 2.0),
                  ("Jobcenter", "normal", 2.5), ("Materielgård", "normal", 0.8), ("Ungdomsskole", "normal", 1.5),
                  ("Idrætscenter", "normal", 0.5), ("Botilbud", "critical", 0.8), ("Tandpleje", "normal", 0.7)],
        "first": ["Anne", "Mette", "Søren", "Lars", "Jonas", "Sofie", "Ahmed", "Kirsten", "Peter", "Line",
                  "Mads", "Camilla", "Henrik", "Birgitte", "Rasmus", "Ida"],
        "last": ["Jensen", "Nielsen", "Hansen", "Pedersen", "Andersen", "Christensen", "Larsen", "Sørensen",
                 "Rasmussen", "Kristensen", "Lauridsen", "Holm", "Bech", "Damgaard"],
        "team": "Team",
        "rooms": ["Kontor", "Mødelokale", "Reception", "Personalerum", "Vagtstue", "Klasselokale", "Lager"],
        "phone": "+45 96 11",
    },
    "sv": {
        "name": "Höglandets IT-förbund Big Bang 2026",
        "timezone": "Europe/Stockholm",
        "center": (57.65, 14.70),
        "domain": "ad.hoglandet.se",
        "towns": [("Eksjö", "575 80"), ("Nässjö", "571 80"), ("Sävsjö", "576 80"), ("Tranås", "573 82"),
                  ("Vetlanda", "574 80"), ("Aneby", "578 80"), ("Bodafors", "571 62"), ("Anneberg", "571 61"),
                  ("Gripenberg", "573 97"), ("Landsbro", "571 77"), ("Ingatorp", "575 96"), ("Holsbybrunn", "574 73")],
        "streets": ["Storgatan", "Kyrkogatan", "Skolgatan", "Järnvägsgatan", "Parkgatan", "Västra vägen",
                    "Östra Storgatan", "Norra Järnvägsgatan", "Södra vägen", "Hantverkargatan", "Ågatan", "Björkvägen"],
        "kinds": [("Kommunhus", "high", 6.0), ("Skola", "normal", 3.0), ("Äldreboende", "critical", 1.2),
                  ("Förskola", "normal", 0.6), ("Bibliotek", "normal", 1.0), ("Vårdcentral", "high", 2.0),
                  ("Socialkontor", "normal", 2.0), ("Gymnasium", "normal", 3.5), ("Fritidsgård", "normal", 0.5),
                  ("Räddningstjänst", "critical", 0.8), ("LSS-boende", "critical", 0.6)],
        "first": ["Anna", "Erik", "Lars", "Karin", "Johan", "Maria", "Emma", "Anders", "Sara", "Per",
                  "Elin", "Oskar", "Lena", "Nils"],
        "last": ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson",
                 "Svensson", "Gustafsson", "Pettersson", "Lindberg"],
        "team": "Team",
        "rooms": ["Kontor", "Konferensrum", "Reception", "Personalrum", "Expedition", "Klassrum", "Förråd"],
        "phone": "+46 380 51",
    },
}


def _slug(text: str) -> str:
    table = str.maketrans({"æ": "ae", "ø": "oe", "å": "aa", "ä": "a", "ö": "o", "é": "e"})
    return re.sub(r"[^a-z0-9]+", "-", text.lower().translate(table)).strip("-")


def _split(total: int, weights: list[float]) -> list[int]:
    """Split `total` in proportion to `weights` exactly (largest remainder)."""
    if total <= 0 or not weights:
        return [0] * len(weights)
    s = sum(weights)
    raw = [total * w / s for w in weights]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


def generate(size: Size, seed: int = 1) -> dict[str, Any]:
    """The inventory as {relative file name: data}."""
    if min(size.locations, size.servers) < 1:
        raise UserError("an inventory needs at least one location and one server")
    if min(size.workstations, size.thin_clients) < 0:
        raise UserError("device counts cannot be negative")
    rng = random.Random(seed)
    loc = LOCALES[size.locale]
    files: dict[str, Any] = {}

    # --- servers: domain controllers first, then SQL and file, Citrix, applications
    servers = _servers(size.servers, rng, loc)
    names = [s["name"] for s in servers]
    dcs = [n for n in names if "-dc" in n]
    files_srv = [n for n in names if "-fil" in n] or dcs
    mdts = [n for n in names if "-mdt" in n] or dcs
    storefronts = [n for n in names if "-ctxsf" in n] or dcs

    # --- teams
    n_teams = max(2, round(size.locations / 10))
    people = [(rng.choice(loc["first"]), rng.choice(loc["last"])) for _ in range(n_teams * 3)]
    teams = []
    for t in range(n_teams):
        techs = []
        for k in range(3):
            first, last = people[t * 3 + k]
            techs.append({"id": f"t{t + 1:02d}-{_slug(first)[:3]}{k + 1}", "name": f"{first} {last}",
                          "phone": f"{loc['phone']} {2000 + t * 10 + k}"})
        teams.append({"id": f"team-{t + 1:02d}", "name": f"{loc['team']} {t + 1}", "lead": techs[0]["name"],
                      "technicians": techs, "capacity": {"parallel_locations": 2, "parallel_devices": 6}})

    # --- locations with uneven sizes (a town hall has far more desks than a kindergarten)
    kinds = [rng.choice(loc["kinds"]) for _ in range(size.locations)]
    weights = [k[2] * rng.uniform(0.5, 1.5) for k in kinds]
    ws_counts = _split(size.workstations, weights)
    tc_counts = _split(size.thin_clients, [w * rng.uniform(0.6, 1.4) for w in weights])
    lat0, lon0 = loc["center"]
    ws_serial = tc_serial = 0
    seen_names: dict[str, int] = {}
    locations = []
    for i in range(size.locations):
        kind, criticality, _ = kinds[i]
        town, postcode = loc["towns"][i % len(loc["towns"])] if i < len(loc["towns"]) else rng.choice(loc["towns"])
        lid = f"{_slug(town)[:3].upper()}-{i + 1:03d}"
        prefix = lid.lower()
        entry: dict[str, Any] = {
            "id": lid,
            "name": _unique_name(f"{town} {kind}", seen_names),
            "address": f"{rng.choice(loc['streets'])} {rng.randint(1, 120)}, {postcode} {town}",
            "coordinates": [round(lat0 + rng.uniform(-0.25, 0.25), 4), round(lon0 + rng.uniform(-0.4, 0.4), 4)],
            "team": teams[i % n_teams]["id"],
            "criticality": criticality,
        }
        if criticality == "critical":
            entry["access_hours"] = "24/7"
        else:
            entry["access_hours"] = [{"days": ["fri"], "from": "16:00", "to": "23:00"},
                                     {"days": ["sat", "sun"], "from": "07:00", "to": "22:00"}]
        requires = {dcs[i % len(dcs)], files_srv[i % len(files_srv)]}
        if ws_counts[i]:
            requires.add(mdts[i % len(mdts)])
        if tc_counts[i]:
            requires.add(storefronts[i % len(storefronts)])
        entry["requires"] = sorted(requires)
        entry["network"] = {"subnet": f"10.{40 + i // 250}.{i % 250}.0/24", "broadcast": f"10.{40 + i // 250}.{i % 250}.255"}
        first, last = rng.choice(loc["first"]), rng.choice(loc["last"])
        entry["contacts"] = [{"name": f"{first} {last}", "role": "contact", "phone": f"{loc['phone']} {3000 + i}"}]
        workstations = []
        for n in range(ws_counts[i]):
            ws_serial += 1
            workstations.append({
                "hostname": f"{prefix}-pc{n + 1:03d}", "serial": f"PF{ws_serial:06d}",
                "mac": _mac(0x001A2B, ws_serial), "current_image": "win10-22h2",
                "room": f"{rng.choice(loc['rooms'])} {rng.randint(1, 30)}", "desk": f"{rng.randint(1, 3)}.{n + 1:02d}",
            })
        thin_clients = []
        for n in range(tc_counts[i]):
            tc_serial += 1
            thin_clients.append({
                "hostname": f"{prefix}-tc{n + 1:03d}", "serial": f"IG{tc_serial:06d}",
                "mac": _mac(0x00E0C5, tc_serial), "current_profile": "citrix-2022",
                "room": f"{rng.choice(loc['rooms'])} {rng.randint(1, 30)}",
            })
        if workstations:
            entry["workstations"] = workstations
        if thin_clients:
            entry["thin_clients"] = thin_clients
        locations.append(entry)

    files["rollout.yaml"] = {
        "rollout": {
            "name": loc["name"],
            "window": {"start": "2026-11-27T16:00", "end": "2026-11-30T07:00", "timezone": loc["timezone"]},
            "images": {"win11-2026.11": {"version": "10.0.26100.2314", "description": "Windows 11 24H2 standard"}},
            "thin_client_profiles": {"citrix-2026": {"firmware": "12.6.1",
                                                     "storefront_url": f"https://storefront.{loc['domain'][3:]}/Citrix/Store",
                                                     "hostname_pattern": "{location}-tc-{index:03d}"}},
            "baselines": {"std-2026": {"packages": ["Microsoft 365 Apps", "Citrix Workspace", "PDF reader"]}},
            "failure_policy": {"retries": 2, "retry_delay": "2m", "max_fail_percent": 25,
                               "halt_rollout": {"failed_locations_percent": 40}},
        },
        "defaults": {
            "workstation": {"target_image": "win11-2026.11", "baseline": "std-2026", "domain": loc["domain"],
                            "model": "Lenovo ThinkCentre M70q Gen 5"},
            "thin_client": {"target_profile": "citrix-2026", "model": "IGEL UD3"},
            "server": {"datacenter": "DC1", "customization": {"os": "windows", "domain": loc["domain"],
                                                               "dns": ["10.20.0.10", "10.20.0.11"],
                                                               "netmask": "255.255.0.0", "gateway": "10.20.0.1"}},
        },
        "rehearsal": {"seed": seed, "compression": 3600, "failure_rate": 0.02,
                      "steps": {"srv.provision": {"duration": "20m"}, "ws.image": {"duration": "45m"},
                                "tc.reassign": {"duration": "8m"}}},
    }
    files["teams.yaml"] = {"teams": teams}
    files["servers.yaml"] = {"servers": servers}
    for entry in locations:
        files[f"locations/{entry['id'].lower()}.yaml"] = {"locations": [entry]}
    return files


def _unique_name(name: str, seen: dict[str, int]) -> str:
    seen[name] = seen.get(name, 0) + 1
    return name if seen[name] == 1 else f"{name} {seen[name]}"


def _mac(oui: int, n: int) -> str:
    value = (oui << 24) | (n & 0xFFFFFF)
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def _servers(count: int, rng: random.Random, loc: dict[str, Any]) -> list[dict[str, Any]]:
    """A realistic server estate: DCs, SQL, file, deployment, Citrix (~40%), applications."""
    def n(share: float, minimum: int) -> int:
        return max(minimum, round(count * share))

    core = [("dc", "domain controller", n(0.01, 1), [], "tpl-win2022-core"),
            ("sql", "SQL Server", n(0.025, 1), ["dc"], "tpl-win2022"),
            ("fil", "file server", n(0.03, 1), ["dc"], "tpl-win2022"),
            ("mdt", "deployment server", n(0.005, 1), ["dc", "fil"], "tpl-win2022"),
            ("ctxddc", "Citrix delivery controller", n(0.01, 1), ["sql"], "tpl-win2022"),
            ("ctxsf", "Citrix StoreFront", n(0.01, 1), ["ctxddc"], "tpl-win2022")]
    if count < len(core):  # tiny estates keep the start of the chain
        core = [(a, b, 1, d, t) for a, b, _, d, t in core[:count]]
    rest = count - sum(p[2] for p in core)
    session_hosts = min(rest, round(count * 0.40))
    plan = core + [("ctxvda", "Citrix session host", session_hosts, ["ctxddc"], "tpl-win2022-vda"),
                   ("app", "application server", rest - session_hosts, ["sql"], "tpl-win2022")]
    made: dict[str, list[str]] = {}
    servers = []
    ip = 10
    for role, title, how_many, deps, template in plan:
        made[role] = []
        for k in range(how_many):
            name = f"srv-{role}{k + 1:02d}" if how_many < 100 else f"srv-{role}{k + 1:03d}"
            made[role].append(name)
            depends = sorted({made[d][k % len(made[d])] for d in deps if made.get(d)})
            citrix = role.startswith("ctx")
            cluster = f"cl-{'ctx' if citrix else 'prod'}-{k % 3 + 1:02d}"
            servers.append({
                "name": name, "role": title, "template": template, "cluster": cluster,
                "datastore": f"ds-{'ssd' if role in ('sql', 'ctxvda') else 'std'}-{k % 4 + 1:02d}",
                "network": "vlan110-servers" if not citrix else "vlan120-citrix",
                "platform": "citrix" if citrix else "vmware",
                "cpu": 8 if role in ("sql", "ctxvda") else rng.choice([2, 4]),
                "memory_gb": 32 if role in ("sql", "ctxvda") else rng.choice([8, 16]),
                "disks_gb": [100] + ([500] if role in ("sql", "fil") else []),
                "depends_on": depends,
                "customization": {"ip": f"10.20.{ip // 250}.{ip % 250 + 2}"},
            })
            ip += 1
    return servers


def write(files: dict[str, Any], out: Path, *, force: bool = False) -> list[Path]:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} is not empty", hint="choose an empty directory or pass --force")
    written = []
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        header = "# Generated by `bigbang inventory generate`; deterministic for its arguments and seed.\n"
        path.write_text(header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                                           default_flow_style=None, width=120), encoding="utf-8")
        written.append(path)
    return written
