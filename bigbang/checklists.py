"""Per-location checklists for field technicians: the data, the printout (HTML and PDF), translations.

One checklist per location, built from the inventory and the plan and, when a run
is given, the ledger (step results, check-offs, sign-off, problems). The field
app shows the same data live; `bigbang checklists` prints it. Texts come from
templates/i18n/<lang>.yaml (English is the fallback for a missing key), so a
translator edits one YAML file and nothing else.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from bigbang.errors import ConfigError
from bigbang.inventory.model import Inventory, Location, Workstation
from bigbang.plan import LocationPlan, Plan
from bigbang.report import templates_dir
from bigbang.status import DeviceStatus, device_status
from bigbang.store.ledger import Ledger, StepRecord

# What a technician does, per device kind, in order; the orchestration's own steps are shown beside them.
# (task, needs a typed/scanned value)
LOCATION_START_TASKS = (("arrive", False),)
WORKSTATION_TASKS = (("serial", True), ("cabled", False), ("imaged", False), ("tested", False))
THIN_CLIENT_TASKS = (("cabled", False), ("profile", False), ("tested", False))
LOCATION_END_TASKS = (("tidy", False),)
LOCATION_ITEM_PREFIX = "location"

FINAL_LOCATION = ("succeeded", "completed_with_failures", "halted", "blocked", "skipped")


# ---------------------------------------------------------------- translations

def i18n_dir() -> Path:
    return templates_dir() / "i18n"


def languages() -> list[str]:
    return sorted(p.stem for p in i18n_dir().glob("*.yaml"))


@lru_cache(maxsize=16)
def _catalogue(lang: str, folder: str) -> dict[str, str]:
    path = Path(folder) / f"{lang}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return _flatten(data)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def translator(lang: str = "en") -> Callable[..., str]:
    """t(key, **values): the text in `lang`, falling back to English, then to the key itself."""
    folder = str(i18n_dir())
    if lang not in languages():
        raise ConfigError(f"no translation '{lang}'", hint="available: " + ", ".join(languages()))
    own = _catalogue(lang, folder)
    english = _catalogue("en", folder)

    def t(key: str, **values: Any) -> str:
        text = own.get(key) or english.get(key) or key
        try:
            return text.format(**values) if values else text
        except (KeyError, IndexError, ValueError):
            return text

    t.lang = lang  # type: ignore[attr-defined]
    return t


def plural(t: Callable[..., str]) -> Callable[..., str]:
    """t_n(key, n): `key.one` for n == 1, else `key.other`, with {n} filled in (every language here has two forms)."""

    def t_n(key: str, n: int, **values: Any) -> str:
        return t(f"{key}.{'one' if n == 1 else 'other'}", n=n, **values)

    return t_n


# ---------------------------------------------------------------- the data

@dataclass
class Item:
    id: str
    task: str
    kind: str  # location | workstation | thin_client
    needs_value: bool = False
    expected: str | None = None  # e.g. the serial the inventory expects
    checked: bool = False
    value: str | None = None
    by: str | None = None
    at: float | None = None

    @property
    def mismatch(self) -> bool:
        return bool(self.expected and self.value and self.value.strip().lower() != self.expected.lower())


@dataclass
class StepView:
    kind: str
    status: str  # planned | running | succeeded | failed | skipped
    message: str = ""
    start: float | None = None  # seconds on the run's timeline
    end: float | None = None
    attempts: int = 0


@dataclass
class DeviceCard:
    hostname: str
    kind: str
    new_hostname: str
    serial: str | None
    mac: str
    model: str | None
    room: str | None
    desk: str | None
    user: str | None
    old: str | None  # current image or profile
    new: str  # target image (version) or profile
    steps: list[StepView]
    items: list[Item]
    report_url: str | None = None  # the end user's self-service form for this desk (its sticker's QR code)

    @property
    def status(self) -> str:
        status = device_status([None if s.status == "planned" else s.status for s in self.steps])
        return "planned" if status == DeviceStatus.PENDING else str(status)


@dataclass
class Checklist:
    location: Location
    team_id: str
    team_name: str
    technicians: list[dict[str, str | None]]
    access: list[tuple[str, dict[str, Any]]]  # (i18n key, values)
    risks: list[tuple[str, dict[str, Any]]]
    position: int  # 1-based place in the team's schedule
    planned_start: datetime | None
    start_items: list[Item]
    devices: list[DeviceCard]
    end_items: list[Item]
    url: str | None = None
    run_id: str | None = None
    status: str = "planned"
    location_row: dict[str, Any] | None = None
    signoff: dict[str, Any] | None = None
    verify: StepRecord | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def items(self) -> list[Item]:
        return [*self.start_items, *(i for d in self.devices for i in d.items), *self.end_items]

    @property
    def open_work(self) -> tuple[int, int]:
        """What a sign-off signs: (items not ticked, devices failed)."""
        return (len(self.items) - self.checked_count, sum(1 for d in self.devices if d.status == DeviceStatus.FAILED))

    def item(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    @property
    def checked_count(self) -> int:
        return sum(1 for i in self.items if i.checked)

    @property
    def device_hostnames(self) -> list[str]:
        return [d.hostname for d in self.devices]


def item_ids(location: Location) -> list[str]:
    """Every checklist item of a location, in order (what `bigbang check` accepts)."""
    ids = [f"{LOCATION_ITEM_PREFIX}.{task}" for task, _ in LOCATION_START_TASKS]
    for device in location.devices:
        tasks = WORKSTATION_TASKS if isinstance(device, Workstation) else THIN_CLIENT_TASKS
        ids += [f"{device.hostname}.{task}" for task, _ in tasks]
    ids += [f"{LOCATION_ITEM_PREFIX}.{task}" for task, _ in LOCATION_END_TASKS]
    return ids


def dispatch_order(plan: Plan) -> list[LocationPlan]:
    """The locations in the order their teams take them: by team, then planned start (the stored schedule),
    then place in the team's chain (`after_location`), then id."""
    by_id = {loc.id: loc for loc in plan.locations}
    depth: dict[str, int] = {}

    def place(loc: LocationPlan) -> int:
        seen = 0
        cur: LocationPlan | None = loc
        while cur is not None and cur.after_location and seen < len(by_id):
            cur = by_id.get(cur.after_location)
            seen += 1
        return seen

    for loc in plan.locations:
        depth[loc.id] = place(loc)
    never = float("inf")
    return sorted(plan.locations, key=lambda loc: (loc.team, loc.start_offset if loc.start_offset is not None
                                                   else never, depth[loc.id], loc.chain, loc.id))


def schedule(plan: Plan) -> dict[str, tuple[int, LocationPlan]]:
    """location id -> (1-based place in its team's dispatch order, its plan)."""
    counters: dict[str, int] = {}
    out = {}
    for loc in dispatch_order(plan):
        counters[loc.team] = counters.get(loc.team, 0) + 1
        out[loc.id] = (counters[loc.team], loc)
    return {loc.id: out[loc.id] for loc in plan.locations}


def build_checklist(inventory: Inventory, plan: Plan, location_id: str, *, ledger: Ledger | None = None,
                    run_id: str | None = None, checks: dict | None = None, base_url: str | None = None,
                    steps: dict[str, StepRecord] | None = None, location_rows: dict | None = None) -> Checklist:
    """The checklist of one location; with `ledger` and `run_id`, with live state from the run."""
    loc = inventory.location_by_id[location_id]
    position, loc_plan = schedule(plan)[location_id]
    team = inventory.team_by_id[loc_plan.team]
    if ledger is not None and run_id is not None:
        if steps is None:
            steps = ledger.step_results(run_id, scope=location_id)
        if checks is None:
            from bigbang.store.field import FieldStore

            checks = FieldStore(ledger).checks(run_id, location_id)
        if location_rows is None:
            location_rows = ledger.location_results(run_id)
    steps = steps or {}
    checks = checks or {}

    def item(prefix: str, task: str, kind: str, needs_value: bool, expected: str | None = None) -> Item:
        it = Item(id=f"{prefix}.{task}", task=task, kind=kind, needs_value=needs_value, expected=expected)
        state = checks.get((location_id, it.id))
        if state is not None:
            it.checked, it.value, it.by, it.at = state.checked, state.value, state.by, state.at
        return it

    devices = []
    for device_plan in loc_plan.devices:
        dev = inventory.device_by_hostname[device_plan.hostname][1]
        views = []
        for step in device_plan.steps:
            rec = steps.get(step.id)
            views.append(StepView(step.kind, rec.status if rec else "planned", rec.message if rec else "",
                                  rec.clock_start if rec else None, rec.clock_end if rec else None,
                                  rec.attempts if rec else 0))
        if isinstance(dev, Workstation):
            image = inventory.rollout.images.get(dev.target_image)
            new = f"{dev.target_image} ({image.version})" if image else dev.target_image
            items = [item(dev.hostname, t, "workstation", v, dev.serial if t == "serial" else None)
                     for t, v in WORKSTATION_TASKS]
            old = dev.current_image
        else:
            new = dev.target_profile
            items = [item(dev.hostname, t, "thin_client", v) for t, v in THIN_CLIENT_TASKS]
            old = dev.current_profile
        new_hostname = device_plan.steps[0].params.get("hostname") or dev.hostname
        devices.append(DeviceCard(
            hostname=dev.hostname, kind=dev.kind, new_hostname=new_hostname, serial=dev.serial, mac=dev.mac,
            model=dev.model, room=dev.room, desk=dev.desk, user=getattr(dev, "user", None), old=old, new=new,
            steps=views, items=items, report_url=report_url(base_url, dev.hostname) if base_url else None))

    window = inventory.rollout.window
    planned = window.start + timedelta(seconds=loc_plan.start_offset) if loc_plan.start_offset is not None else None
    checklist = Checklist(
        location=loc, team_id=team.id, team_name=team.name,
        technicians=[{"name": t.name, "phone": t.phone} for t in team.technicians],
        access=_access(loc), risks=_risks(loc), position=position, planned_start=planned,
        start_items=[item(LOCATION_ITEM_PREFIX, t, "location", v) for t, v in LOCATION_START_TASKS],
        devices=devices,
        end_items=[item(LOCATION_ITEM_PREFIX, t, "location", v) for t, v in LOCATION_END_TASKS],
        url=location_url(base_url, location_id) if base_url else None, run_id=run_id,
    )
    if ledger is not None and run_id is not None:
        checklist.location_row = (location_rows or {}).get(location_id)
        checklist.signoff = ledger.signoff(run_id, location_id)
        checklist.verify = steps.get(loc_plan.verify.id)
        checklist.problems = ledger.problems(run_id, location_id)
        checklist.status = location_status(checklist.location_row, steps, loc_plan, checklist.signoff)
    return checklist


def location_status(row: dict[str, Any] | None, steps: dict[str, StepRecord], loc_plan: LocationPlan,
                    signoff: dict[str, Any] | None) -> str:
    """planned | in_progress | awaiting_signoff | signed_off | succeeded | completed_with_failures | halted | ..."""
    if row is not None and row["status"] in FINAL_LOCATION:
        return row["status"]
    if signoff is not None:
        return "signed_off"
    if row is None:
        return "planned"
    device_steps = [s.id for d in loc_plan.devices for s in d.steps]
    if device_steps and all((steps.get(sid) is not None and steps[sid].final) for sid in device_steps):
        return "awaiting_signoff"
    return "in_progress"


def _access(loc: Location) -> list[tuple[str, dict[str, Any]]]:
    if not loc.access_hours:
        return [("access.always", {})]
    return [("access.window", {"days": ",".join(w.days), "start": f"{w.start:%H:%M}", "end": f"{w.end:%H:%M}"})
            for w in loc.access_hours]


def _risks(loc: Location) -> list[tuple[str, dict[str, Any]]]:
    risks: list[tuple[str, dict[str, Any]]] = []
    if loc.criticality in ("high", "critical"):
        risks.append((f"risk.{loc.criticality}", {}))
    if not loc.access_hours and loc.criticality == "critical":
        risks.append(("risk.open_247", {}))
    elif loc.access_hours:
        risks.append(("risk.access_only", {}))
    if loc.requires:
        risks.append(("risk.requires", {"servers": ", ".join(loc.requires)}))
    if loc.notes:
        risks.append(("risk.note", {"note": loc.notes}))
    return risks


def location_url(base_url: str, location_id: str) -> str:
    """The technicians' page of a location in the field app (the QR code at the top of its checklist)."""
    return f"{base_url.rstrip('/')}/l/{location_id}"


def report_url(base_url: str, hostname: str) -> str:
    """The end users' self-service report form of a device, pre-filled (the QR code on its desk's sticker)."""
    return f"{base_url.rstrip('/')}/r/{quote(hostname, safe='')}"


def qr_data_uri(text: str) -> str:
    """A QR code of `text` as a PNG data URI (prints sharp; works offline on paper and in the browser)."""
    import qrcode

    qr = qrcode.QRCode(border=2, box_size=6, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(text)
    qr.make(fit=True)
    buf = io.BytesIO()
    qr.make_image().save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------- rendering

def template_env(lang: str = "en") -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir())),
        autoescape=select_autoescape(["html", "html.j2", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    t = translator(lang)
    env.globals.update(t=t, t_n=plural(t), lang=lang, qr_data_uri=qr_data_uri, languages=languages())
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

    def day(dt: datetime) -> str:  # the language's day name, never the machine locale's English
        return t(f"day.{days[dt.weekday()]}")

    env.filters["clock"] = lambda ts: f"{day(datetime.fromtimestamp(ts))} {datetime.fromtimestamp(ts):%H:%M}" if ts else "–"
    env.filters["local"] = lambda dt: f"{day(dt)} {dt.day}.{dt.month}. {dt:%H:%M}" if dt else "–"
    env.filters["day_names"] = lambda days: ", ".join(t(f"day.{d}") for d in days.split(","))
    return env


def render_checklist_html(checklist: Checklist, inventory: Inventory, lang: str = "en") -> str:
    env = template_env(lang)
    return env.get_template("checklist.html.j2").render(c=checklist, rollout=inventory.rollout,
                                                        generated=datetime.now())


def html_to_pdf(html: str, out: Path) -> None:
    from weasyprint import (
        HTML,  # imported here: it is slow to import and only printing needs it
    )

    HTML(string=html, base_url=str(templates_dir())).write_pdf(str(out))


@dataclass(frozen=True)
class ChecklistFile:
    location_id: str
    html: Path
    pdf: Path | None


def write_checklists(inventory: Inventory, plan: Plan, out_dir: Path, *, lang: str = "en",
                     base_url: str | None = None, ledger: Ledger | None = None, run_id: str | None = None,
                     pdf: bool = True, only: list[str] | None = None) -> list[ChecklistFile]:
    """Write <out>/<location>.html (and .pdf) for every location (or `only` these), plus index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = template_env(lang)
    files = []
    ids = only or [loc.id for loc in plan.locations]
    for location_id in ids:
        checklist = build_checklist(inventory, plan, location_id, ledger=ledger, run_id=run_id, base_url=base_url)
        html = env.get_template("checklist.html.j2").render(c=checklist, rollout=inventory.rollout,
                                                            generated=datetime.now())
        name = _safe_name(location_id)
        html_path = out_dir / f"{name}.html"
        html_path.write_text(html, encoding="utf-8")
        pdf_path = None
        if pdf:
            pdf_path = out_dir / f"{name}.pdf"
            html_to_pdf(html, pdf_path)
        files.append(ChecklistFile(location_id, html_path, pdf_path))
    index = env.get_template("checklist_index.html.j2").render(
        rollout=inventory.rollout, files=[(f.location_id, f.html.name, f.pdf.name if f.pdf else None,
                                           inventory.location_by_id[f.location_id]) for f in files])
    (out_dir / "index.html").write_text(index, encoding="utf-8")
    return files


def _safe_name(location_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in location_id)


def default_base_url(inventory: Inventory | None = None) -> str | None:
    """The field app's public address when no `--url` is given: $BIGBANG_FIELD_URL, else `rollout.field_url`."""
    return os.environ.get("BIGBANG_FIELD_URL") or (inventory.rollout.field_url if inventory is not None else None)
