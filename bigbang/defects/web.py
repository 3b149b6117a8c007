"""Support staff's defect pages, a router for the field app (bigbang/web/app.py includes it).

A list filtered by location, category, priority and status; a defect's detail with
its device's inventory data, rollout history and probe results; assign, comment,
state changes and resolve as POST forms with the session's CSRF token, answered by
a redirect (post/redirect/get). Support staff also register end users' reports here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from bigbang.defects.sources import validate_report
from bigbang.defects.triage import PRIORITY_NAMES
from bigbang.store.defects import MAX_FIELD, MAX_TEXT, STATES, TRANSITIONS, DefectError, DefectQueue
from bigbang.web.auth import User, require_role, verify_csrf

router = APIRouter(prefix="/defects")
support_staff = require_role("support", "ops_lead")


def _queue(request: Request) -> DefectQueue:
    queue = getattr(request.app.state, "defect_queue", None)
    if queue is None:
        queue = DefectQueue(request.app.state.field.ledger.engine)
        request.app.state.defect_queue = queue
    return queue


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    render = request.app.state.render  # the field app's renderer: its layout, user and CSRF token
    return render(request, template, status=status, priority_names=PRIORITY_NAMES, **context)


def _back(key: str, msg: str) -> RedirectResponse:
    return RedirectResponse(f"/defects/{key}?msg={msg}", status_code=303)


def _refused(exc: DefectError) -> HTTPException:
    return HTTPException(status_code=409, detail=str(exc))


@router.get("", response_class=HTMLResponse)
def defect_list(request: Request, location: str = "", category: str = "", priority: str = "",
                status: str = "open", user: User = Depends(support_staff), msg: str | None = None):
    queue = _queue(request)
    level = int(priority) if priority in ("1", "2", "3", "4") else None
    state = status if status in (*STATES, "open", "all") else "open"
    rows = queue.list(location=location or None, category=category or None, priority=level, state=state, limit=500)
    return _page(request, "defects/list.html.j2", rows=rows, facets=queue.facets(), problems=queue.problems()[:10],
                 counts=queue.counts(), f={"location": location, "category": category, "priority": priority,
                                           "status": state},
                 locations=request.app.state.field.inventory.locations, max_text=MAX_TEXT, max_field=MAX_FIELD,
                 msg=msg if msg in ("reported", "already") else None, report_errors=None, report=None)


@router.post("/reports", response_class=HTMLResponse, dependencies=[Depends(verify_csrf)])
def add_report(request: Request, device: str = Form("", max_length=MAX_FIELD),
               location: str = Form("", max_length=MAX_FIELD), category: str = Form("general", max_length=60),
               text: str = Form("", max_length=MAX_TEXT), reporter: str = Form("", max_length=MAX_FIELD),
               request_key: str = Form(..., max_length=64), user: User = Depends(support_staff)):
    """An end user's report taken by support staff (phone, mail): filed at the next collection."""
    inventory = request.app.state.field.inventory
    row, problems = validate_report({"device": device, "location": location, "category": category, "text": text,
                                     "reporter": reporter or user.name, "report_id": f"web-{request_key}"},
                                    inventory, channel="web")
    if problems or row is None:
        queue = _queue(request)
        return _page(request, "defects/list.html.j2", status=422, rows=queue.list(state="open", limit=500),
                     facets=queue.facets(), problems=queue.problems()[:10], counts=queue.counts(),
                     f={"location": "", "category": "", "priority": "", "status": "open"},
                     locations=inventory.locations, max_text=MAX_TEXT, max_field=MAX_FIELD, msg=None,
                     report_errors=problems, report={"device": device, "location": location, "category": category,
                                                     "text": text, "reporter": reporter})
    new = _queue(request).add_reports([row])
    return RedirectResponse("/defects?" + urlencode({"msg": "reported" if new else "already"}), status_code=303)


@router.get("/{key}", response_class=HTMLResponse)
def defect_detail(request: Request, key: str, user: User = Depends(support_staff), msg: str | None = None):
    queue = _queue(request)
    d = queue.get(key)
    if d is None:
        raise HTTPException(status_code=404, detail="not_found")
    field = request.app.state.field
    found = field.inventory.device_by_hostname.get(d["target"])
    device = found[1].model_dump(mode="json", exclude={"vars"}) if found else None
    location = field.inventory.location_by_id.get(d["location_id"] or "")
    server = field.inventory.server_by_name.get(d["target"])
    rollout_steps = []
    if d["run_id"]:
        steps = field.ledger.step_results(d["run_id"])
        rollout_steps = sorted((s for s in steps.values() if s.target == d["target"]), key=lambda s: s.started_at or 0)
    return _page(request, "defects/detail.html.j2", d=d, history=queue.history(key), device=device,
                 location=location, server=server.model_dump(mode="json", exclude={"vars"}) if server else None,
                 rollout_steps=rollout_steps, probes=queue.observations(target=d["target"], source="probe", limit=20),
                 observations=queue.observations(key, limit=50), transitions=TRANSITIONS[d["state"]],
                 problem_members=queue.list(problem=d["problem_key"], state="all", limit=50) if d["problem_key"] else [],
                 max_text=MAX_TEXT, msg=msg if msg in ("assigned", "commented", "changed") else None)


@router.post("/{key}/assign", dependencies=[Depends(verify_csrf)])
def assign(key: str, request: Request, assignee: str = Form(..., max_length=120), user: User = Depends(support_staff)):
    try:
        _queue(request).assign(key, assignee, user.id)
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
