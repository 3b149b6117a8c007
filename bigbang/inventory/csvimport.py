"""Import devices from an asset spreadsheet (CSV) into per-location inventory files.

Each bad row is reported with its line number and column; good rows are still
imported. Nothing in the file stops the import: a row with another separator, an
unclosed quote, bytes that are not text, an over-long value are each one refused
row (a quote may open a value over a few lines, never swallow the rest of the file). The header names columns (case and spaces don't matter; common
spreadsheet names such as "MAC address" or "Serial number" are understood).
"""

from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bigbang.errors import Problem, UserError
from bigbang.inventory.model import check_hostname, normalise_mac
from bigbang.inventory.source import decode_marking

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


MAX_CSV_BYTES = 64 * 1024 * 1024
MAX_LINE = 10_000  # characters in one row
MAX_RECORD_LINES = 5  # a quoted value may span lines (an address), but not more than this
DELIMITERS = ",;\t|"
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class ImportResult:
    files: list[Path] = field(default_factory=list)
    devices: int = 0
    problems: list[Problem] = field(default_factory=list)
    refused_lines: set[int] = field(default_factory=set)  # rows (by first line) not imported
    files_refused: int = 0  # location files not written

    @property
    def refused(self) -> int:
        return len(self.refused_lines)


def _column(name: str) -> str | None:
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return ALIASES.get(key)


def _decode(data: bytes) -> tuple[str, dict[int, str]]:
    """UTF-8 (with or without BOM), else Windows-1252 (Excel on Danish/Swedish Windows).

    Bytes that fit neither become U+FFFD; their lines are returned with what was wrong, so those
    rows are refused and every other row is imported.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    text, bad = decode_marking(data, "utf-8")
    if not bad:
        return text, bad
    # Mostly UTF-8 with a stray byte, or a Windows-1252 file?
    if any(ord(c) > 127 and c != "\ufffd" for c in text):
        return text, bad
    return decode_marking(data, "cp1252")


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter, strict=True), [])


def _choose_delimiter(header: str) -> str:
    """The separator that splits the header into the most known columns."""
    best, score = ",", (-1, -1)
    for candidate in DELIMITERS:
        try:
            names = _split(header, candidate)
        except csv.Error:
            continue
        known = sum(1 for n in names if _column(n))
        if (known, len(names)) > score:
            best, score = candidate, (known, len(names))
    return best


def read_rows(path: Path, delimiter: str | None = None,
              refused: set[int] | None = None) -> tuple[list[tuple[int, dict[str, str]]], list[Problem]]:
    """Rows as (line number, {column: value}) plus problems: with the header, and each refused row.

    Lines of refused rows are added to `refused`.
    """
    display = str(path)
    refused = refused if refused is not None else set()
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise UserError(f"the delimiter must be one character (not a quote or a line break), not {delimiter!r}",
                        hint="e.g. --delimiter ';'")
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise UserError(f"{display} is {size // (1024 * 1024)} MB; at most {MAX_CSV_BYTES // (1024 * 1024)} MB")
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {display}: {exc.strerror or exc}") from exc
    text, bad_lines = _decode(data)
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise UserError(f"{display} is empty")
    header_line = first + 1
    if header_line in bad_lines:
        raise UserError(f"{display}:{header_line}: the header: {bad_lines[header_line]}",
                        hint="save the spreadsheet as 'CSV UTF-8'")
    delimiter = delimiter or _choose_delimiter(lines[first])
    try:
        header = _split(lines[first], delimiter)
    except csv.Error as exc:
        raise UserError(f"{display}:{header_line}: cannot read the header: {exc}") from None
    problems: list[Problem] = []
    columns: list[str | None] = []
    for raw in header:
        col = _column(raw)
        if col is None and raw.strip():
            problems.append(Problem(display, header_line, raw.strip()[:60], "unknown column; it is ignored"))
        columns.append(col)
    if "location_id" not in columns or "hostname" not in columns:
        raise UserError(f"{display}:{header_line}: the header needs at least 'location_id' and 'hostname' columns",
                        hint=f"found: {', '.join(h.strip()[:60] for h in header)[:500]}")

    def refuse(line: int, message: str, column: str = "row") -> None:
        problems.append(Problem(display, line, column, message))
        refused.add(line)

    rows = []
    i = first + 1
    while i < len(lines):
        line_no = i + 1
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if len(line) > MAX_LINE:
            refuse(line_no, f"the row is {len(line):,} characters long; at most {MAX_LINE:,}")
            i += 1
            continue
        values: list[str] | None = None
        span = 1
        error = ""
        while True:  # a quoted value may continue on the next lines
            record = "\n".join(lines[i:i + span])
            try:
                values = _split(record, delimiter)
                break
            except csv.Error as exc:
                error = str(exc)
            if "unexpected end of data" not in error or span >= MAX_RECORD_LINES or i + span >= len(lines):
                break
            span += 1
            if len(lines[i + span - 1]) > MAX_LINE:
                break
        if values is None or (span > 1 and len(values) > len(columns)):
            if "unexpected end of data" in error or span > 1:
                refuse(line_no, 'a quote (") opens a value that is not closed on this line; the row is refused')
            else:
                refuse(line_no, f"cannot read the row: {error}")
            i += 1  # the next line is a row of its own, not part of this value
            continue
        i += span
        spanned = set(range(line_no, line_no + span))
        bad = next((bad_lines[n] for n in sorted(spanned) if n in bad_lines), None)
        if bad:
            refuse(line_no, f"{bad}; the row is refused (save the spreadsheet as 'CSV UTF-8')")
            continue
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(columns) and (len(values) > len(columns) or len(values) == 1):
            other = next((d for d in DELIMITERS if d != delimiter and d in record
                          and len(_safe_split(record, d)) == len(columns)), None)
            if other is not None:
                refuse(line_no, f"this row separates values with {other!r}, the header with {delimiter!r}; "
                                "the row is refused")
                continue
            if len(values) > len(columns):
                refuse(line_no, f"{len(values)} values but the header has {len(columns)} columns")
                continue
        control = next((v for v in values if _CONTROL.search(v)), None)
        if control is not None:
            ch = _CONTROL.search(control).group()  # type: ignore[union-attr]
            refuse(line_no, f"a value contains the control character U+{ord(ch):04X}; the row is refused")
            continue
        rows.append((line_no, {c: v.strip() for c, v in zip(columns, values, strict=False) if c}))
    return rows, problems


def _safe_split(record: str, delimiter: str) -> list[str]:
    try:
        return _split(record, delimiter)
    except csv.Error:
        return []


def import_csv(path: Path, out: Path, *, delimiter: str | None = None, force: bool = False) -> ImportResult:
    result = ImportResult()
    rows, problems = read_rows(path, delimiter, result.refused_lines)
    result.problems = problems
    display = str(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the location files")
    locations: dict[str, dict[str, Any]] = {}  # by lower-case id: the file name
    seen: dict[str, dict[str, int]] = {"hostname": {}, "mac": {}, "serial": {}}

    for line, row in rows:
        def bad(column: str, message: str, line: int = line) -> None:
            result.problems.append(Problem(display, line, column, message))
            result.refused_lines.add(line)

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
            found = device.get(key) or (row.get(key) if key == "serial" else None)
            if found:
                value = str(found)
                first = seen[key].get(value.lower())
                if first is not None:
                    bad(key, f"duplicate {key} {value!r} (first on line {first})")
        loc = locations.get(lid.lower())
        if loc is not None and loc["id"] != lid:
            bad("location_id", f"location id {lid!r} differs only in case from {loc['id']!r} (line {loc['line']}); "
                               "write it the same way in every row")
        if len(result.problems) > errors_before or kind is None:
            continue
        meta = {"name": row.get("location_name", ""), "address": row.get("location_address", ""),
                "team": row.get("team", "")}
        if loc is None:
            missing = [f"location_{k}" if k != "team" else "team" for k, v in meta.items() if not v]
            if missing:
                bad(missing[0], f"the first row of location {lid} must give {', '.join(missing)}")
                continue
            loc = locations[lid.lower()] = {"id": lid, **meta, "workstations": [], "thin_clients": [], "line": line}
        else:
            clash = [k for k, v in meta.items() if v and v != loc[k]]
            if clash:
                bad(clash[0] if clash[0] == "team" else f"location_{clash[0]}",
                    f"{meta[clash[0]]!r} differs from line {loc['line']} ({loc[clash[0]]!r}) for location {lid}")
                continue
        for key in ("hostname", "mac", "serial"):
            found = device.get(key) or row.get(key)
            if found:
                value = str(found)
                seen[key][value.lower()] = line
        for key in DEVICE_FIELDS[kind]:
            if row.get(key) and key not in device:
                device[key] = row[key]
        loc["workstations" if kind == "workstation" else "thin_clients"].append(device)
        result.devices += 1

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make the directory {out}: {exc.strerror or exc}") from None
    for key, loc in sorted(locations.items()):
        target = out / f"{key}.yaml"
        if (target.exists() or target.is_symlink()) and not force:
            result.problems.append(Problem(str(target), 1, "", "exists already; not overwritten (use --force)"))
            result.files_refused += 1
            continue
        entry = {k: v for k, v in loc.items() if k != "line" and v not in ([], "")}
        try:
            target.write_text(f"# Imported from {path.name} by `bigbang inventory import`.\n"
                              + yaml.safe_dump({"locations": [entry]}, sort_keys=False, allow_unicode=True,
                                               default_flow_style=None, width=120), encoding="utf-8")
        except OSError as exc:
            result.problems.append(Problem(str(target), 1, "", f"cannot write: {exc.strerror or exc}"))
            result.files_refused += 1
            continue
        result.files.append(target)
    result.problems.sort()
    return result
