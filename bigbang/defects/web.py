"""Support staff's defect pages, and the end users' self-service report form (bigbang/web/app.py includes both).

`router` (signed-in support staff and ops leads): one run's queue at a time (`?run=`, default the
field app's run), searched (`?q=`), filtered, sorted and worked in bulk; a defect's detail with its
device's inventory data, the affected user, rollout history and probe results; assign (to a known
support account), comment, fix, link, merge, state changes and resolve as POST forms with the
session's CSRF token, answered by a redirect (post/redirect/get).

`public_router` (no sign-in): `/r/HOSTNAME` (the short URL on a desk's sticker) and `/r`,
a small form with the device pre-filled. The report goes into the run's queue at once (deduplicated
against what is there) and the reporter gets a reference number; it is CSRF-safe (the anonymous
session's token), rate-limited per device and per address (counted in the store, so every field-app
process behind a proxy shares the limit), and shows nothing of other reports.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from bigbang.defects.sources import report_observations, validate_report
from bigbang.defects.triage import PRIORITY_NAMES, support_accounts
from bigbang.inventory.model import Inventory
from bigbang.store.defects import MAX_FIELD, MAX_TEXT, STATES, TRANSITIONS, DefectError, DefectQueue
from bigbang.web.auth import User, require_role, verify_csrf

router = APIRouter(prefix="/defects")
public_router = APIRouter()
support_staff = require_role("support", "ops_lead")
SORTS = ("priority", "age", "resolve_due", "response_due", "updated", "location")


def _queue(request: Request) -> DefectQueue:
    queue = getattr(request.app.state, "defect_queue", None)
    if queue is None:
        queue = DefectQueue(request.app.state.field.ledger.engine)
        request.app.state.defect_queue = queue
    return queue


def _run(request: Request, wanted: str = "") -> str | None:
    """The run whose queue is shown: the one asked for (if it has one), else the field app's run."""
    field = request.app.state.field
    if wanted and (field.ledger.get_run(wanted) is not None):
        return wanted
    return field.run_id() or next((r["run_id"] for r in _queue(request).runs() if r["run_id"]), None)


def _inventory(request: Request, run_id: str | None) -> Inventory:
    """The run's frozen inventory (never the YAML), or the field app's when there is no run."""
    field = request.app.state.field
    if run_id:
        from bigbang.session import frozen_run

        return frozen_run(field.ledger, run_id).inventory
    return field.inventory


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    render = request.app.state.render  # the field app's renderer: its layout, user and CSRF token
    return render(request, template, status=status, priority_names=PRIORITY_NAMES, **context)


def _back(key: str, msg: str) -> RedirectResponse:
    return RedirectResponse(f"/defects/{key}?msg={msg}", status_code=303)


def _refused(exc: DefectError) -> HTTPException:
    return HTTPException(status_code=409, detail=str(exc))


def _sla(d: dict[str, Any], now: float) -> str:
    if d["state"] not in ("new", "triaged", "in_progress") or not d.get("resolve_due"):
        return ""
    if d.get("response_due") and d.get("responded_at") is None and now > d["response_due"]:
        return "no reply"
    left = d["resolve_due"] - now
    if left < 0:
        return "breach"
    return f"{left / 3600:.0f} h" if left < 2 * 86400 else f"{left / 86400:.0f} d"


def _decorate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = time.time()
    for d in rows:
        d["sla"] = _sla(d, now)
        d["age_h"] = round((now - d["first_seen"]) / 3600)
    return rows


@router.get("", response_class=HTMLResponse)
def defect_list(request: Request, location: str = "", category: str = "", priority: str = "",
                status: str = "open", q: str = "", run: str = "", sort: str = "priority", mine: str = "",
                user: User = Depends(support_staff), msg: str | None = None):
    queue = _queue(request)
    run_id = _run(request, run)
    level = int(priority) if priority in ("1", "2", "3", "4") else None
    state = status if status in (*STATES, "open", "all") else "open"
    sort = sort if sort in SORTS else "priority"
    rows = queue.list(run_id=run_id, location=location or None, category=category or None, priority=level,
                      state=state, search=q[:200] or None, sort=sort, assignee=user.id if mine else None, limit=500)
    inventory = _inventory(request, run_id)
    _decorate(rows)
    runs = queue.runs()
    shown = next((r for r in runs if r["run_id"] == run_id), {"run_id": run_id, "rollout": inventory.rollout.name,
                                                              "mode": ""})
    return _page(request, "defects/list.html.j2", rows=rows, facets=queue.facets(run_id),
                 problems=queue.problems(run_id)[:10], counts=queue.counts(run_id), runs=runs, shown=shown,
                 f={"location": location, "category": category, "priority": priority, "status": state, "q": q,
                    "sort": sort, "mine": mine, "run": run_id or ""},
                 sorts=SORTS, accounts=sorted(support_accounts(inventory)), locations=inventory.locations,
                 max_text=MAX_TEXT, max_field=MAX_FIELD,
                 msg=msg if msg in ("reported", "already", "bulk") else None, report_errors=None, report=None)


@router.post("/bulk", dependencies=[Depends(verify_csrf)])
async def bulk(request: Request, user: User = Depends(support_staff)):
    form = await request.form()
    keys = [str(k) for k in form.getlist("key")][:500]
    action = str(form.get("action") or "")
    value = str(form.get("value") or "")[:MAX_TEXT]
    run_id = _run(request, str(form.get("run") or ""))
    accounts = support_accounts(_inventory(request, run_id)) if action == "assign" else None
    done, refused = _queue(request).bulk(keys, action, value, user.id, accounts)
    if refused and not done:
        raise HTTPException(status_code=409, detail="; ".join(refused)[:500])
    return RedirectResponse("/defects?" + urlencode({"msg": "bulk", "run": run_id or ""}), status_code=303)


@router.post("/reports", response_class=HTMLResponse, dependencies=[Depends(verify_csrf)])
def add_report(request: Request, device: str = Form("", max_length=MAX_FIELD),
               location: str = Form("", max_length=MAX_FIELD), category: str = Form("general", max_length=60),
               text: str = Form("", max_length=MAX_TEXT), reporter: str = Form("", max_length=MAX_FIELD),
               contact: str = Form("", max_length=MAX_FIELD), run: str = Form("", max_length=80),
               request_key: str = Form(..., max_length=64), user: User = Depends(support_staff)):
    """An end user's report taken by support staff (phone, mail): in the run's queue at once."""
    run_id = _run(request, run)
    inventory = _inventory(request, run_id)
    row, problems = validate_report({"device": device, "location": location, "category": category, "text": text,
                                     "reporter": reporter or user.name, "report_id": f"web-{request_key}"},
                                    inventory, channel="web")
    if problems or row is None:
        queue = _queue(request)
        return _page(request, "defects/list.html.j2", status=422, rows=_decorate(queue.list(run_id=run_id, state="open")),
                     facets=queue.facets(run_id), problems=queue.problems(run_id)[:10], counts=queue.counts(run_id),
                     runs=queue.runs(), shown={"run_id": run_id, "rollout": inventory.rollout.name, "mode": ""},
                     f={"location": "", "category": "", "priority": "", "status": "open", "q": "",
                        "sort": "priority", "mine": "", "run": run_id or ""},
                     sorts=SORTS, accounts=sorted(support_accounts(inventory)), locations=inventory.locations,
                     max_text=MAX_TEXT, max_field=MAX_FIELD, msg=None, report_errors=problems,
                     report={"device": device, "location": location, "category": category, "text": text,
                             "reporter": reporter, "contact": contact})
    row["contact"] = contact.strip()[:MAX_FIELD]
    new, _ = file_report(request, row, run_id, inventory)
    return RedirectResponse("/defects?" + urlencode({"msg": "reported" if new else "already", "run": run_id or ""}),
                            status_code=303)


def file_report(request: Request, row: dict[str, Any], run_id: str | None, inventory: Inventory) -> tuple[bool, str]:
    """Store a validated report and file it into the run's queue now; returns (new?, the defect key)."""
    queue = _queue(request)
    row["reference"] = "R-" + hashlib.blake2b(row["report_id"].encode(), digest_size=4).hexdigest().upper()
    new = queue.add_reports([row], run_id=run_id) > 0
    mode = str((request.app.state.field.ledger.get_run(run_id) or {}).get("mode") or "") if run_id else None
    summary = queue.apply(report_observations([row]), inventory, run_id=run_id, mode=mode, actor="intake")
    queue.mark_reports_processed([row["report_id"]])
    key = next(iter(summary.keys), "")
    return new, key


@router.get("/{key}", response_class=HTMLResponse)
def defect_detail(request: Request, key: str, user: User = Depends(support_staff), msg: str | None = None):
    queue = _queue(request)
    d = queue.get(key)
    if d is None:
        raise HTTPException(status_code=404, detail="not_found")
    field = request.app.state.field
    inventory = _inventory(request, d["run_id"])
    found = inventory.device_by_hostname.get(d["target"])
    device = found[1].model_dump(mode="json", exclude={"vars"}) if found else None
    location = inventory.location_by_id.get(d["location_id"] or "")
    server = inventory.server_by_name.get(d["target"])
    rollout_steps = []
    if d["run_id"]:
        steps = field.ledger.step_results(d["run_id"])
        rollout_steps = sorted((s for s in steps.values() if s.target == d["target"]), key=lambda s: s.started_at or 0)
    return _page(request, "defects/detail.html.j2", d=d, history=queue.history(key), device=device,
                 location=location, server=server.model_dump(mode="json", exclude={"vars"}) if server else None,
                 rollout_steps=rollout_steps, probes=queue.observations(target=d["target"], source="probe", limit=20),
                 observations=queue.observations(key, limit=50), transitions=TRANSITIONS[d["state"]],
                 problem_members=queue.list(problem=d["problem_key"], state="all", limit=50) if d["problem_key"] else [],
                 accounts=sorted(support_accounts(inventory)), sla=_sla(d, time.time()),
                 max_text=MAX_TEXT, msg=msg if msg in ("assigned", "commented", "changed") else None)


@router.post("/{key}/assign", dependencies=[Depends(verify_csrf)])
def assign(key: str, request: Request, assignee: str = Form(..., max_length=120), user: User = Depends(support_staff)):
    queue = _queue(request)
    d = queue.get(key)
    if d is None:
        raise HTTPException(status_code=404, detail="not_found")
    try:
        queue.assign(key, assignee, user.id, support_accounts(_inventory(request, d["run_id"])))
    except DefectError as exc:
        raise _refused(exc) from exc
    return _back(key, "assigned")


@router.post("/{key}/comment", dependencies=[Depends(verify_csrf)])
def comment(key: str, request: Request, text: str = Form(..., max_length=MAX_TEXT), user: User = Depends(support_staff)):
    try:
        _queue(request).comment(key, text, user.id)
    except DefectError as exc:
        raise _refused(exc) from exc
    return _back(key, "commented")


@router.post("/{key}/fixed", dependencies=[Depends(verify_csrf)])
def fixed(key: str, request: Request, note: str = Form(..., min_length=1, max_length=MAX_TEXT),
          user: User = Depends(support_staff)):
    try:
        _queue(request).mark_fixed(key, note, user.id)
    except DefectError as exc:
        raise _refused(exc) from exc
    return _back(key, "changed")


@router.post("/{key}/link", dependencies=[Depends(verify_csrf)])
def link(key: str, request: Request, other: str = Form(..., max_length=16), how: str = Form("link", max_length=10),
         user: User = Depends(support_staff)):
    try:
        if how == "merge":
            _queue(request).merge(key, other.strip(), user.id)
        else:
            _queue(request).link(key, other.strip(), user.id)
    except DefectError as exc:
        raise _refused(exc) from exc
    return _back(key, "changed")


@router.post("/{key}/state", dependencies=[Depends(verify_csrf)])
def change_state(key: str, request: Request, state: str = Form(..., max_length=20),
                 note: str = Form("", max_length=MAX_TEXT), user: User = Depends(support_staff)):
    try:
        _queue(request).set_state(key, state, user.id, note)
    except DefectError as exc:
        raise _refused(exc) from exc
    return _back(key, "changed")


@router.post("/{key}/resolve", dependencies=[Depends(verify_csrf)])
def resolve(key: str, request: Request, note: str = Form(..., min_length=1, max_length=MAX_TEXT),
            user: User = Depends(support_staff)):
    try:
        _queue(request).resolve(key, note, user.id)
    except DefectError as exc:
        raise _refused(exc) from exc
    return _back(key, "changed")


# ---------------------------------------------------------------- self-service (no sign-in)

def _self_service(request: Request, device: str, status: int = 200, **context: Any) -> HTMLResponse:
    run_id = _run(request)
    inventory = _inventory(request, run_id)
    found = inventory.device_by_hostname.get(device.strip().lower()) if device else None
    values = {"device": found[1].hostname if found else "", "location": found[0] if found else None,
              "errors": None, "reference": None, "form": {"category": "general", "text": "", "name": "", "contact": ""}, "max_text": MAX_TEXT, "max_field": MAX_FIELD}
    values.update(context)
    return _page(request, "defects/self_service.html.j2", status=status, **values)


@public_router.get("/r", response_class=HTMLResponse)
def report_form(request: Request, device: str = ""):
    return _self_service(request, device[:MAX_FIELD])


@public_router.get("/r/{device}", response_class=HTMLResponse)
def short_url(request: Request, device: str):
    """The short URL on a desk's sticker (`/r/HOSTNAME`): the report form with the device filled in."""
    return _self_service(request, device[:MAX_FIELD])


@public_router.post("/r", response_class=HTMLResponse, dependencies=[Depends(verify_csrf)])
def report_submit(request: Request, device: str = Form("", max_length=MAX_FIELD),
                  category: str = Form("general", max_length=60), text: str = Form("", max_length=MAX_TEXT),
                  name: str = Form("", max_length=MAX_FIELD), contact: str = Form("", max_length=MAX_FIELD),
                  request_key: str = Form(..., min_length=8, max_length=64)):
    run_id = _run(request)
    inventory = _inventory(request, run_id)
    form = {"category": category, "text": text, "name": name, "contact": contact}
    row, problems = validate_report({"device": device, "category": category, "text": text,
                                     "reporter": name, "report_id": f"self-{request_key}"}, inventory,
                                    channel="self")
    if problems or row is None:
        return _self_service(request, device, status=422, errors=problems, form=form)
    # Behind a proxy the address is the end user's only with `bigbang serve --trust-proxy`.
    client = request.client.host if request.client else "?"
    retry_at = _queue(request).admit_report([f"device:{row['device']}", f"address:{client}"],
                                            inventory.support.report_rate_limit)
    if retry_at is not None:
        at = datetime.fromtimestamp(retry_at, inventory.rollout.window.zone)
        refused = _self_service(request, device, status=429, form=form,
                                errors=[f"Too many reports for this device or from this address in the last hour. "
                                        f"Please try again at {at:%H:%M}, or call the service desk."])
        refused.headers["Retry-After"] = str(max(1, round(retry_at - time.time())))
        return refused
    row["contact"] = contact.strip()[:MAX_FIELD]
    file_report(request, row, run_id, inventory)
    return _self_service(request, device, reference=row["reference"])
