"""Ticket systems defects are filed in: a small adapter interface and two adapters.

The embedded queue is always the record (store.py). An external system gets each
defect's ticket created once (found again by the custom field holding our defect
key, so a crash between create and bookkeeping never files it twice), then
comments for what changed and its status and priority. Keep `TicketSystem`
small so TOPdesk, Zammad, Jira Service Management or ServiceNow adapters can follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import requests

from bigbang.defects.triage import PRIORITY_NAMES
from bigbang.errors import BigBangError
from bigbang.inventory.model import TicketSystemSettings
from bigbang.store.defects import DefectQueue


class TicketSystemUnavailable(BigBangError):
    """The ticket system cannot be reached or refuses us: stop, retry on the next run."""


class TicketRefused(BigBangError):
    """The ticket system refused this one ticket; the others still go."""


@dataclass(frozen=True)
class TicketDraft:
    defect_key: str
    subject: str
    body: str
    priority: int  # bigbang's 1 (highest) .. 4
    status: str  # bigbang's state, or "reopened" for a new one that was resolved before
    fields: dict[str, str] = field(default_factory=dict)  # run, rollout, SLA times...: see ticket_fields


@runtime_checkable
class TicketSystem(Protocol):
    name: str

    def find(self, defect_key: str) -> str | None:
        """The ticket id filed for this defect key, if any."""

    def create(self, draft: TicketDraft) -> str:
        """File a new ticket; returns its id."""

    def update(self, ticket_id: str, *, status: str, priority: int, comment: str | None,
               fields: dict[str, str] | None = None) -> None:
        """Bring the ticket to the defect's state, priority and fields, adding a comment when given."""

    def close(self) -> None: ...


class EmbeddedTickets:
    """The embedded queue as a ticket system: the defect is the ticket, nothing to push."""

    name = "embedded"

    def __init__(self, queue: DefectQueue):
        self.queue = queue

    def find(self, defect_key: str) -> str | None:
        return defect_key if self.queue.get(defect_key) else None

    def create(self, draft: TicketDraft) -> str:
        return draft.defect_key

    def update(self, ticket_id: str, *, status: str, priority: int, comment: str | None,
               fields: dict[str, str] | None = None) -> None:
        pass

    def close(self) -> None:
        pass


# RT's default lifecycle: new, open, stalled, resolved, rejected, deleted.
RT_STATUS = {"new": "new", "reopened": "open", "triaged": "open", "in_progress": "open", "resolved": "resolved",
             "closed": "resolved"}


class RequestTracker:
    """Request Tracker 5 over REST2 (Basic auth)."""

    name = "rt"

    def __init__(self, settings: TicketSystemSettings, password: str, *, session: requests.Session | None = None):
        self.settings = settings
        self.base = (settings.url or "").rstrip("/") + "/REST/2.0"
        self.http = session or requests.Session()
        self.http.auth = (settings.user or "", password)
        self.http.verify = settings.verify_tls
        self.http.headers["Accept"] = "application/json"

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, f"{self.base}/{path}", timeout=self.settings.timeout, **kw)
        except requests.RequestException as exc:
            raise TicketSystemUnavailable(f"RT at {self.settings.url} is unreachable: {exc.__class__.__name__}: {exc}") from exc
        if r.status_code in (401, 403):
            raise TicketSystemUnavailable(f"RT at {self.settings.url} refused user '{self.settings.user}' "
                                          f"(HTTP {r.status_code})", hint="check the user and its password secret")
        if r.status_code >= 500 or r.status_code == 429:
            raise TicketSystemUnavailable(f"RT at {self.settings.url} answered HTTP {r.status_code}: {r.text[:200]}")
        if r.status_code >= 400:
            raise TicketRefused(f"RT refused {method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        try:
            return r.json()
        except ValueError:
            return r.text

    def find(self, defect_key: str) -> str | None:
        field_name = self.settings.key_field.replace("'", "\\'")
        query = f"CF.{{{field_name}}} = '{defect_key}'"
        data = self._call("GET", "tickets", params={"query": query, "fields": "id", "orderby": "id"})
        items = data.get("items", []) if isinstance(data, dict) else []
        return str(items[0]["id"]) if items else None

    def _priority(self, level: int) -> int:
        return self.settings.priorities.get(level, 50)

    def create(self, draft: TicketDraft) -> str:
        data = self._call("POST", "ticket", json={
            "Queue": self.settings.queue, "Subject": draft.subject, "Content": draft.body,
            "ContentType": "text/plain", "Priority": self._priority(draft.priority),
            "Status": RT_STATUS.get(draft.status, "new"),
            "CustomFields": {**self._fields(draft.fields), self.settings.key_field: draft.defect_key},
        })
        if not isinstance(data, dict) or "id" not in data:
            raise TicketRefused(f"RT did not return a ticket id: {str(data)[:200]}")
        return str(data["id"])

    def _fields(self, values: dict[str, str]) -> dict[str, str]:
        """bigbang's values under the RT custom field names the settings give (`fields`)."""
        return {cf: values.get(name, "") for name, cf in self.settings.fields.items()}

    def update(self, ticket_id: str, *, status: str, priority: int, comment: str | None,
               fields: dict[str, str] | None = None) -> None:
        if comment:
            self._call("POST", f"ticket/{ticket_id}/comment", data=comment.encode("utf-8"),
                       headers={"Content-Type": "text/plain; charset=utf-8"})
        body: dict[str, Any] = {"Status": RT_STATUS.get(status, "open"), "Priority": self._priority(priority)}
        if fields is not None and self.settings.fields:
            body["CustomFields"] = self._fields(fields)
        self._call("PUT", f"ticket/{ticket_id}", json=body)

    def status(self, ticket_id: str) -> dict[str, Any]:
        return self._call("GET", f"ticket/{ticket_id}")

    def close(self) -> None:
        self.http.close()


def ticket_system(settings: TicketSystemSettings, queue: DefectQueue,
                  resolve_secret: Callable[[Any], str]) -> TicketSystem:
    if settings.kind == "rt":
        return RequestTracker(settings, resolve_secret(settings.password))
    return EmbeddedTickets(queue)


# ---------------------------------------------------------------- sync

@dataclass
class SyncResult:
    system: str
    created: int = 0
    updated: int = 0
    found_existing: int = 0
    pending: int = 0  # left for the next run
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _iso(value: float | None) -> str:
    from datetime import UTC, datetime

    return "" if value is None else datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ticket_fields(defect: dict[str, Any]) -> dict[str, str]:
    """What may go into ticket custom fields (`ticket_system.fields`); times in UTC, RT's format."""
    return {"run_id": defect.get("run_id") or "", "rollout": defect.get("rollout") or "",
            "mode": defect.get("mode") or "", "priority_name": PRIORITY_NAMES.get(defect["priority"], ""),
            "response_due": _iso(defect.get("response_due")), "resolve_due": _iso(defect.get("resolve_due")),
            "user": " ".join(x for x in (defect.get("user_name") or "", defect.get("user_phone") or "") if x)
            or (defect.get("user_id") or ""),
            "reporter": " ".join(x for x in (defect.get("reporter") or "", defect.get("reporter_contact") or "")
                                 if x)}


def draft_of(defect: dict[str, Any]) -> TicketDraft:
    f = ticket_fields(defect)
    body = "\n".join([
        defect["title"],
        "",
        f"Defect key: {defect['key']}",
        f"Run: {f['run_id'] or '-'} ({f['rollout'] or '-'}, {f['mode'] or '-'})",
        f"User: {f['user'] or '-'}",
        f"Reported by: {f['reporter'] or '-'}",
        f"SLA: respond by {f['response_due'] or '-'} UTC, resolve by {f['resolve_due'] or '-'} UTC",
        f"Target: {defect['target']} ({defect['target_kind']}, {defect['model']})",
        f"Location: {defect['location_id'] or '-'}",
        f"Category: {defect['category']}",
        f"Check: {defect['check_name']}",
        f"Priority: {PRIORITY_NAMES.get(defect['priority'], defect['priority'])}: "
        f"{defect.get('priority_reason') or defect['score']}",
        f"Problem: {defect['problem_key'] or '-'}",
        f"Seen: {defect['occurrences']} time(s)",
        "",
        defect["message"],
    ])
    return TicketDraft(defect["key"], f"[{defect['key']}] {defect['title']}"[:200], body, defect["priority"],
                       status_of(defect), f)


def _note(entry: dict[str, Any]) -> str:
    moved = entry["from_state"] and entry["to_state"] and entry["from_state"] != entry["to_state"]
    states = f" ({entry['from_state']} -> {entry['to_state']})" if moved else ""
    return f"[{entry['action']}{states} by {entry['actor']}] {entry['text']}".strip()


def status_of(defect: dict[str, Any]) -> str:
    return "reopened" if defect["state"] == "new" and defect["reopened"] else defect["state"]


def sync_tickets(queue: DefectQueue, system: TicketSystem) -> SyncResult:
    """Push every defect whose latest version the system has not seen. Stops at the first outage."""
    result = SyncResult(system.name)
    if isinstance(system, EmbeddedTickets):
        return result
    pending = queue.unsynced(system.name)
    for i, defect in enumerate(pending):
        key = defect["key"]
        try:
            ticket_id = defect["external_id"]
            created = False
            if ticket_id is None:
                ticket_id = system.find(key)
                if ticket_id is None:
                    ticket_id = system.create(draft_of(defect))
                    created = True
                    result.created += 1
                else:
                    result.found_existing += 1
                queue.record_ticket(key, system.name, external_id=ticket_id)
            entries = queue.history_since(key, defect["synced_history_id"] or 0)
            notes = [_note(e) for e in entries if e["action"] != "created"]
            if notes or not created:
                system.update(ticket_id, status=status_of(defect), priority=defect["priority"],
                              comment="\n".join(notes) or None, fields=ticket_fields(defect))
                if not created:
                    result.updated += 1
            queue.record_ticket(key, system.name, external_id=ticket_id, synced_version=defect["version"],
                                synced_history_id=max((e["id"] for e in entries), default=defect["synced_history_id"] or 0))
        except TicketSystemUnavailable as exc:
            queue.record_ticket(key, system.name, external_id=None, error=str(exc))
            result.errors.append(str(exc))
            result.pending = len(pending) - i
            break
        except TicketRefused as exc:
            queue.record_ticket(key, system.name, external_id=None, error=str(exc))
            result.errors.append(f"{key}: {exc}")
            result.pending += 1
    return result
