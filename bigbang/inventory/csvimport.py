"""Import devices from an asset spreadsheet (CSV) into per-location inventory files.

Each bad row is reported with its line number and column; good rows are still
imported. The header names columns (case and spaces don't matter; common
spreadsheet names such as "MAC address" or "Serial number" are understood).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bigbang.errors import Problem, UserError
from bigbang.inventory.model import check_hostname, normalise_mac

ALIASES = {
    "location": "location_id", "location_id": "location_id", "site": "location_id", "lokation": "location_id",
    "location_name": "location_name", "site_name": "location_name",
    "location_address": "location_address", "address": "location_address", "adresse": "location_address",
    "team": "team",
    "kind": "kind", "type": "kind", "device_type": "kind",
    "hostname": "hostname", "computer_name": "hostname", "name": "hostname",
    "serial": "serial", "serial_number": "serial", "serienummer": "serial",
    "mac": "mac", "mac_address": "mac", "mac_adresse": "mac",
    "model": "model", "desk": "desk", "room": "room", "rum": "room", "user": "user", "bruger": "user",
    "current_image": "current_image", "target_image": "target_image",
    "current_profile": "current_profile", "target_profile": "target_profile",
    "ip": "address", "ip_address": "address",
}
KINDS = {"workstation": "workstation", "pc": "workstation", "ws": "workstation", "desktop": "workstation",
         "laptop": "workstation", "thin_client": "thin_client", "thin client": "thin_client", "tc": "thin_client",
         "thinclient": "thin_client"}
MAX_FIELD = 500
DEVICE_FIELDS = {"workstation": ("hostname", "serial", "mac", "model", "current_image", "target_image", "desk",
                                 "room", "user", "address"),
                 "thin_client": ("hostname", "serial", "mac", "model", "current_profile", "target_profile", "desk",
                                 "room", "address")}


@dataclass
class ImportResult:
    files: list[Path] = field(default_factory=list)
    devices: int = 0
    problems: list[Problem] = field(default_factory=list)


def _column(name: str) -> str | None:
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return ALIASES.get(key)


def read_rows(path: Path, delimiter: str | None = None) -> tuple[list[tuple[int, dict[str, str]]], list[Problem]]:
    """Rows as (line number, {column: value}) plus problems with the header itself."""
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="cp1252")  # Excel's default export on Danish/Swedish Windows
    except OSError as exc:
        raise UserError(f"cannot read {display}: {exc.strerror}") from exc
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{display} is empty") from None
    problems: list[Problem] = []
    columns: list[str | None] = []
    for raw in header:
        col = _column(raw)
        if col is None and raw.strip():
            problems.append(Problem(display, 1, raw.strip(), "unknown column; it is ignored"))
        columns.append(col)
    if "location_id" not in columns or "hostname" not in columns:
        raise UserError(f"{display}:1: the header needs at least 'location_id' and 'hostname' columns",
                        hint=f"found: {', '.join(h.strip() for h in header)}")
    rows = []
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(columns):
            problems.append(Problem(display, line, "", f"{len(values)} values but the header has {len(columns)} columns"))
            continue
        rows.append((line, {c: v.strip() for c, v in zip(columns, values, strict=False) if c}))
    return rows, problems


def import_csv(path: Path, out: Path, *, delimiter: str | None = None, force: bool = False) -> ImportResult:
    rows, problems = read_rows(path, delimiter)
    display = str(path)
    result = ImportResult(problems=problems)
    locations: dict[str, dict[str, Any]] = {}
    seen: dict[str, dict[str, int]] = {"hostname": {}, "mac": {}, "serial": {}}

    for line, row in rows:
        def bad(column: str, message: str, line: int = line) -> None:
            result.problems.append(Problem(display, line, column, message))

        errors_before = len(result.problems)
        for column, value in row.items():
            if len(value) > MAX_FIELD:
                bad(column, f"value is {len(value)} characters; at most {MAX_FIELD}")
        kind = KINDS.get(row.get("kind", "workstation").strip().lower() or "workstation")
        if kind is None:
            bad("kind", f"unknown kind {row.get('kind')!r} (workstation or thin_client)")
        lid = row.get("location_id", "")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", lid):
            bad("location_id", f"not a location id: {lid!r}")
        device: dict[str, Any] = {}
        try:
            device["hostname"] = check_hostname(row.get("hostname", ""))
        except ValueError as exc:
            bad("hostname", str(exc))
        if row.get("mac"):
            try:
                device["mac"] = normalise_mac(row["mac"])
            except ValueError as exc:
                bad("mac", str(exc))
        else:
            bad("mac", "missing MAC address")
        if kind == "workstation" and not row.get("serial"):
            bad("serial", "missing serial number")
        for key in ("hostname", "mac", "serial"):
            value = device.get(key) or (row.get(key) if key == "serial" else None)
            if value:
                first = seen[key].get(value.lower())
                if first is not None:
                    bad(key, f"duplicate {key} {value!r} (first on line {first})")
        if len(result.problems) > errors_before:
            continue
        for key in ("hostname", "mac", "serial"):
            value = device.get(key) or row.get(key)
            if value:
                seen[key][value.lower()] = line
        for key in DEVICE_FIELDS[kind]:
            if row.get(key) and key not in device:
                device[key] = row[key]
        loc = locations.get(lid)
        meta = {"name": row.get("location_name", ""), "address": row.get("location_address", ""),
                "team": row.get("team", "")}
        if loc is None:
            missing = [f"location_{k}" if k != "team" else "team" for k, v in meta.items() if not v]
            if missing:
                bad(missing[0], f"the first row of location {lid} must give {', '.join(missing)}")
                continue
            loc = locations[lid] = {"id": lid, **meta, "workstations": [], "thin_clients": [], "line": line}
        else:
            clash = [k for k, v in meta.items() if v and v != loc[k]]
            if clash:
                bad(clash[0] if clash[0] == "team" else f"location_{clash[0]}",
                    f"{meta[clash[0]]!r} differs from line {loc['line']} ({loc[clash[0]]!r}) for location {lid}")
                continue
        loc["workstations" if kind == "workstation" else "thin_clients"].append(device)
        result.devices += 1

    out.mkdir(parents=True, exist_ok=True)
    for lid, loc in sorted(locations.items()):
        target = out / f"{lid.lower()}.yaml"
        if target.exists() and not force:
            result.problems.append(Problem(str(target), 1, "", "exists already; not overwritten (use --force)"))
            continue
        entry = {k: v for k, v in loc.items() if k != "line" and v not in ([], "")}
        target.write_text(f"# Imported from {path.name} by `bigbang inventory import`.\n"
                          + yaml.safe_dump({"locations": [entry]}, sort_keys=False, allow_unicode=True,
                                           default_flow_style=None, width=120), encoding="utf-8")
        result.files.append(target)
    result.problems.sort()
    return result
