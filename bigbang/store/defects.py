"""The embedded support queue: defects, problems, history, tickets, in the ledger's database.

Its own tables on the ledger's engine (SQLite by default, PostgreSQL by URL).
`apply()` turns a batch of observations into defects in one transaction, under a
write lock, so an hourly collection and a manual one never file the same defect
twice. Each defect has a `version` that grows on changes worth telling a ticket
system; the sync to an external system catches up from there (see sync.py).
"""

from __future__ import annotations

import builtins
import json
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    literal_column,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from bigbang.defects.triage import (
    PRIORITY_NAMES,
    TECHNICAL_SOURCES,
    Observation,
    Target,
    TargetIndex,
    category_of,
    defect_key,
    explain,
    failure_kind,
    group_problems,
    priority,
    score,
    signature,
)
from bigbang.errors import UserError
from bigbang.inventory.model import Inventory
from bigbang.store.schema import (
    SQLITE_SEARCH_DDL,
    collections,
    defects,
    history,
    lock,
    metadata,
    observations,
    report_admissions,
    reports,
    tickets,
)
from bigbang.store.schema import defect_problems as problems

STATES = ("new", "triaged", "in_progress", "resolved", "closed")
OPEN_STATES = ("new", "triaged", "in_progress")
# Where support staff may move a defect from each state (the collector also reopens).
TRANSITIONS = {
    "new": ("triaged", "in_progress", "resolved", "closed"),
    "triaged": ("in_progress", "resolved", "closed"),
    "in_progress": ("triaged", "resolved", "closed"),
    "resolved": ("closed", "in_progress"),
    "closed": ("in_progress",),
}
MAX_TEXT = 4000
MAX_FIELD = 200


_DERIVED = ("problem_key", "affected", "priority", "score", "priority_reason", "response_due", "resolve_due",
            "search")


class DefectError(UserError):
    """A support-queue request that cannot be done as asked."""


_ADVISORY_LOCK = 0x6269_6762  # "bigb"
_ADMISSION_LOCK = 0x6262_726C  # "bbrl": the self-service rate limit, apart from collections' lock


@dataclass
class ApplySummary:
    observations: int = 0
    duplicates: int = 0
    created: int = 0
    updated: int = 0
    reopened: int = 0
    resolved: int = 0
    problems: int = 0
    keys: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "keys"}


def _chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


MACHINE_ACTORS = ("collector", "probe", "intake")


def search_text(row: dict[str, Any], target: Target) -> str:
    """Everything a defect can be found by, lower-case, one string (searched with LIKE / trigram index)."""
    parts = [row["key"], row.get("problem_key") or "", row["target"], target.serial, target.mac, target.user_id,
             target.user_name, target.user_phone, _digits(target.user_phone), row.get("location_id") or "", target.location_name,
             row.get("reporter") or "", row.get("reporter_contact") or "", _digits(row.get("reporter_contact") or ""),
             row.get("report_refs") or "", row["category"], row["title"],
             row["message"][:1000], row.get("assignee") or ""]
    return " ".join(" ".join(str(p).split()) for p in parts if p).lower()


def _with_reference(refs: str | None, obs: Observation) -> str | None:
    """The defect's reporters' reference numbers with this report's (a caller gives theirs; staff search it)."""
    ref = str(obs.details.get("reference") or "")
    known = (refs or "").split()
    if ref and ref not in known:
        known = [*known, ref]
        while len(" ".join(known)) > 400:  # the newest are kept
            known.pop(0)
    return " ".join(known) or None


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def search_terms(query: str) -> builtins.list[str]:
    """A query's terms, lower-case; a phone number typed with spaces is one term of its digits."""
    query = query.strip().lower()[:200]
    if not query:
        return []
    compact = query.replace(" ", "").replace("-", "")
    if compact.lstrip("+").isdigit() and len(compact) >= 4:
        return [compact.lstrip("+")]
    return query.split()[:8]


def _title(target: str, obs: Observation, category: str) -> str:
    if obs.source == "user":
        head = f"{target}: user report ({category})"
    elif obs.source == "field":
        head = f"{target}: technician noted ({category})"
    else:
        head = f"{target}: {obs.check} failed"
    text = " ".join(obs.message.split())
    return (f"{head}: {text}" if text else head)[:MAX_FIELD]


class DefectQueue:
    """The embedded support queue on an SQLAlchemy engine (normally the ledger's)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        for attempt in range(3):
            try:
                metadata.create_all(engine)
                break
            except (IntegrityError, OperationalError):  # another process created them at the same moment
                if attempt == 2:
                    raise
                time.sleep(0.2)
        self._add_missing_columns()
        with engine.begin() as conn:
            if conn.execute(select(lock.c.id)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(lock).values(id=1, n=0))
                except IntegrityError:
                    pass

    def _add_missing_columns(self) -> None:
        """Columns schema.py added to the defect tables since a database was made (ALTER TABLE ... ADD),
        and the search index (FTS5 on SQLite, trigram GIN on PostgreSQL) of databases made before it."""
        names = {t.name: t for t in (defects, problems, reports)}
        found = inspect(self.engine)
        tables = set(found.get_table_names())
        for name, table in names.items():
            have = {c["name"] for c in found.get_columns(name)}
            for col in table.columns:
                if col.name not in have:
                    kind = col.type.compile(self.engine.dialect)
                    with self.engine.begin() as conn:
                        try:
                            conn.execute(text(f'ALTER TABLE {name} ADD COLUMN "{col.name}" {kind}'))
                        except (OperationalError, ProgrammingError):  # another process added it just now
                            pass
        try:
            with self.engine.begin() as conn:
                if self.dialect == "sqlite" and "defects_fts" not in tables:
                    for statement in SQLITE_SEARCH_DDL:
                        conn.exec_driver_sql(statement)
                    conn.exec_driver_sql("INSERT INTO defects_fts(defects_fts) VALUES ('rebuild')")
                elif self.dialect == "postgresql" and "ix_defects_search_trgm" not in {
                        i["name"] for i in found.get_indexes("defects")}:
                    conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_defects_search_trgm ON defects "
                                         "USING gin (search gin_trgm_ops)")
        except (OperationalError, ProgrammingError):  # another process made it at the same moment
            pass

    @classmethod
    def open(cls, ledger_url: str | None = None) -> DefectQueue:
        from bigbang.store.ledger import Ledger

        return cls(Ledger(ledger_url).engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _write_lock(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
        else:  # a write first makes SQLite take its write lock before we read
            conn.execute(update(lock).where(lock.c.id == 1).values(n=lock.c.n + 1))

    # ------------------------------------------------------------ collector side
    def apply(self, batch: Sequence[Observation], inventory: Inventory, *, now: float | None = None,
              actor: str = "collector", run_id: str | None = None, mode: str | None = None,
              settled: Collection[str] = ()) -> ApplySummary:
        """File, update, reopen and resolve one run's defects from observations; re-prioritise its open ones.

        `inventory` is the run's frozen inventory; only this run's defects are touched. A passing probe
        resolves a technical defect only on evidence: its target is in `settled` (every change step of
        it has succeeded in the ledger since), or support staff recorded a fix (`fixed`) after its last
        failure.
        """
        now = time.time() if now is None else now
        summary = ApplySummary()
        targets = TargetIndex(inventory)
        rule = inventory.support.priority
        sla = inventory.support.sla
        rollout = inventory.rollout.name
        unique: dict[str, Observation] = {}
        for obs in batch:
            unique.setdefault(obs.obs_id, obs)
        summary.duplicates = len(batch) - len(unique)
        with self.engine.begin() as conn:
            self._write_lock(conn)
            seen: set[str] = set()
            ids = list(unique)
            for chunk in _chunks(ids):
                seen.update(conn.execute(select(observations.c.obs_id).where(observations.c.obs_id.in_(chunk))).scalars())
            fresh = [o for o in unique.values() if o.obs_id not in seen]
            summary.duplicates += len(unique) - len(fresh)
            summary.observations = len(fresh)

            scope = defects.c.run_id == run_id if run_id is not None else defects.c.run_id.is_(None)
            existing = {r["key"]: dict(r) for r in conn.execute(select(defects).where(scope)).mappings()}
            changed: dict[str, dict[str, Any]] = {}
            created: dict[str, dict[str, Any]] = {}
            hist: list[dict[str, Any]] = []
            obs_rows: list[dict[str, Any]] = []

            failing = sorted((o for o in fresh if o.failing), key=lambda o: o.observed_at)
            passing = sorted((o for o in fresh if not o.failing), key=lambda o: o.observed_at)
            technical: dict[str, list[dict[str, Any]]] = defaultdict(list)  # target -> its technical defects
            for known in existing.values():
                if known["source"] in TECHNICAL_SOURCES and not known.get("duplicate_of"):
                    technical[known["target"]].append(known)
            for obs in failing:
                target = targets.resolve(obs.target, obs.location_id)
                sig = signature(obs)
                key = defect_key(target.name, sig, run_id or "")
                row = created.get(key) or existing.get(key)
                if row is None and obs.source == "probe" and technical.get(target.name):
                    # A failing probe of a device that already has a technical defect is that defect seen
                    # again (its verification reads the state the failed step left), not a new one.
                    rows = technical[target.name]
                    row = min(rows, key=lambda r: (r["state"] not in OPEN_STATES, -r["last_seen"]))
                    key = row["key"]
                obs_rows.append(self._obs_row(obs, key))
                if row is None:
                    category = category_of(obs)
                    row = dict(
                        key=key, problem_key=None, target=target.name, target_kind=target.kind,
                        location_id=obs.location_id or target.location_id, model=target.model,
                        check_name=obs.check[:80], signature=sig[:300], category=category[:60], source=obs.source,
                        title=_title(target.name, obs, category), message=obs.message[:MAX_TEXT], state="new",
                        priority=4, score=0.0, affected=1, assignee=None, occurrences=1, reopened=0,
                        first_seen=obs.observed_at, last_seen=obs.observed_at, resolved_at=None, created_at=now,
                        updated_at=now, version=1, run_id=run_id, rollout=rollout[:200], mode=mode,
                        user_id=target.user_id[:120] or None, user_name=target.user_name[:200] or None,
                        user_phone=target.user_phone[:60] or None, reporter=obs.reporter[:200] or None,
                        reporter_contact=str(obs.details.get("contact") or "")[:200] or None, search="",
                        priority_reason="", response_due=None, resolve_due=None, responded_at=None,
                        duplicate_of=None, report_refs=_with_reference(None, obs),
                    )
                    created[key] = row
                    if obs.source in TECHNICAL_SOURCES:
                        technical[target.name].append(row)
                    hist.append(self._hist(key, now, actor, "created", None, "new",
                                           f"{obs.source}: {obs.message}"[:MAX_TEXT]))
                    summary.created += 1
                    continue
                row["occurrences"] += 1
                row["report_refs"] = _with_reference(row.get("report_refs"), obs)
                row["message"] = obs.message[:MAX_TEXT]
                row["last_seen"] = max(row["last_seen"], obs.observed_at)
                row["updated_at"] = now
                if key not in created:
                    changed[key] = row
                if row["state"] in ("resolved", "closed") and obs.observed_at > (row["resolved_at"] or 0):
                    hist.append(self._hist(key, now, actor, "reopened", row["state"], "new",
                                           f"failed again ({obs.source}): {obs.message}"[:MAX_TEXT]))
                    row.update(state="new", resolved_at=None, reopened=row["reopened"] + 1,
                               version=row["version"] + 1)
                    summary.reopened += 1

            by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in [*existing.values(), *created.values()]:
                by_target[row["target"]].append(row)
            fixed_at: dict[str, float] = {}
            if passing and existing:
                keys = list(existing)
                for chunk in _chunks(keys):
                    for k, at in conn.execute(select(history.c.defect_key, func.max(history.c.at))
                                              .where(history.c.defect_key.in_(chunk), history.c.action == "fixed")
                                              .group_by(history.c.defect_key)).all():
                        fixed_at[k] = float(at)
            settled_set = set(settled)
            for obs in passing:
                target = targets.resolve(obs.target, obs.location_id)
                obs_rows.append(self._obs_row(obs, defect_key(target.name, signature(obs), run_id or "")))
                for row in by_target.get(target.name, []):
                    if not (row["state"] in OPEN_STATES and row["source"] in TECHNICAL_SOURCES
                            and row["last_seen"] <= obs.observed_at):
                        continue
                    fix = fixed_at.get(row["key"])
                    if target.name in settled_set:
                        why = "every step of the device has succeeded since"
                    elif fix is not None and row["last_seen"] <= fix <= obs.observed_at:
                        why = "verified after the recorded fix"
                    else:
                        continue  # a passing check alone is no evidence: the failed step has not succeeded
                    note = f"{obs.source} {obs.check} passed ({obs.message}); {why}".strip()
                    hist.append(self._hist(row["key"], now, actor, "resolved", row["state"], "resolved", note))
                    row.update(state="resolved", resolved_at=obs.observed_at, updated_at=now,
                               version=row["version"] + 1)
                    if row["key"] not in created:
                        changed[row["key"]] = row
                    summary.resolved += 1

            # Re-prioritise this run's defects: counts and ages change with every collection.
            every = {**existing, **created}
            groups = group_problems(every.values())
            problem_rows = []
            in_group: dict[str, tuple[str | None, int]] = {}
            for pkey, members in groups.items():
                affected = len({m["target"] for m in members})
                for m in members:
                    in_group[m["key"]] = (pkey, affected)
            for key, row in every.items():
                problem_key, affected = in_group.get(key, (None, 0))
                info = targets.resolve(row["target"], row["location_id"])
                if not affected:
                    affected = info.users
                kind = failure_kind(row["source"], row["check_name"], row["message"])
                age = (row["resolved_at"] or now) - row["first_seen"]
                args = dict(criticality=info.criticality, affected=affected, age_seconds=age,
                            category=row["category"], kind=kind)
                value = round(score(rule, **args), 3)
                level = priority(rule, value)
                was = tuple(row.get(c) for c in _DERIVED)
                target_sla = sla.get(level)
                row.update(problem_key=problem_key, affected=affected, score=value,
                           priority_reason=explain(rule, **args),
                           response_due=row["first_seen"] + target_sla.response if target_sla else None,
                           resolve_due=row["first_seen"] + target_sla.resolve if target_sla else None)
                if level != row["priority"]:
                    if key not in created and row["state"] in OPEN_STATES:
                        hist.append(self._hist(key, now, actor, "priority", None, None,
                                               f"{PRIORITY_NAMES[row['priority']]} -> {PRIORITY_NAMES[level]} "
                                               f"(score {value:g})"))
                        row["version"] += 1
                    row["priority"] = level
                row["search"] = search_text(row, info)
                if key not in created and was != tuple(row.get(c) for c in _DERIVED):
                    changed[key] = row
            for pkey, members in groups.items():
                lead = min(members, key=lambda m: m["first_seen"])
                what = lead["title"].split(": ", 1)[-1]
                if lead["source"] in ("user", "field"):  # people's words differ: name the category only
                    what = f"{'user reports' if lead['source'] == 'user' else 'technician notes'} ({lead['category']})"
                problem_rows.append(dict(
                    key=pkey, run_id=run_id, signature=lead["signature"], model=lead["model"],
                    category=lead["category"],
                    title=f"{len({m['target'] for m in members})} × {lead['model']}: {what}"[:MAX_FIELD],
                    defects=len(members), locations=len({m["location_id"] for m in members}),
                    priority=min(m["priority"] for m in members), first_seen=lead["first_seen"],
                    last_seen=max(m["last_seen"] for m in members)))
            summary.problems = len(problem_rows)
            summary.updated = len(changed)
            summary.keys = set(created) | set(changed)

            if created:
                conn.execute(insert(defects), list(created.values()))
            if changed:
                cols = [c.name for c in defects.columns if c.name != "key"]
                stmt = update(defects).where(defects.c.key == bindparam("k")).values(
                    **{c: bindparam(f"v_{c}") for c in cols})
                conn.execute(stmt, [{"k": r["key"], **{f"v_{c}": r.get(c) for c in cols}} for r in changed.values()])
            if obs_rows:
                conn.execute(insert(observations), obs_rows)
            if hist:
                conn.execute(insert(history), hist)
            pscope = problems.c.run_id == run_id if run_id is not None else problems.c.run_id.is_(None)
            conn.execute(delete(problems).where(pscope))
            if problem_rows:
                conn.execute(insert(problems), problem_rows)
        return summary

    @staticmethod
    def _obs_row(obs: Observation, key: str) -> dict[str, Any]:
        return dict(obs_id=obs.obs_id[:300], defect_key=key, source=obs.source, check_name=obs.check[:80],
                    failing=int(obs.failing), message=obs.message[:MAX_TEXT], reporter=obs.reporter[:MAX_FIELD],
                    observed_at=obs.observed_at, details=json.dumps(obs.details, default=str, sort_keys=True))

    @staticmethod
    def _hist(key: str, at: float, actor: str, action: str, from_state: str | None, to_state: str | None,
              note: str = "") -> dict[str, Any]:
        return dict(defect_key=key, at=at, actor=actor[:120], action=action, from_state=from_state,
                    to_state=to_state, text=note)

    # ------------------------------------------------------------ support staff side
    def get(self, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(defects).where(defects.c.key == key)).mappings().first()
        return dict(row) if row else None

    def require(self, key: str) -> dict[str, Any]:
        row = self.get(key)
        if row is None:
            raise DefectError(f"no defect {key}", hint="list them with `bigbang defects list`")
        return row

    SORTS = {"priority": None, "age": "first_seen", "resolve_due": "resolve_due", "response_due": "response_due",
             "updated": "updated_at", "location": "location_id"}

    def list(self, *, location: str | None = None, category: str | None = None, priority: int | None = None,
             state: str | Sequence[str] | None = None, assignee: str | None = None, problem: str | None = None,
             run_id: str | None = None, search: str | None = None, sort: str = "priority",
             breached: bool = False, now: float | None = None,
             limit: int | None = 500, offset: int = 0) -> builtins.list[dict[str, Any]]:
        """One run's queue (or every run's, without `run_id`), filtered, searched and sorted."""
        query = select(defects)
        if run_id:
            query = query.where(defects.c.run_id == run_id)
        if location:
            query = query.where(defects.c.location_id == location)
        if category:
            query = query.where(defects.c.category == category)
        if priority:
            query = query.where(defects.c.priority == int(priority))
        if state == "open":
            state = OPEN_STATES
        elif state == "all":
            state = None
        elif isinstance(state, str) and state and state not in STATES:
            raise DefectError(f"unknown state '{state}'", hint="use open, all or one of " + ", ".join(STATES))
        if isinstance(state, str) and state:
            query = query.where(defects.c.state == state)
        elif state:
            query = query.where(defects.c.state.in_(list(state)))
        if assignee:
            query = query.where(defects.c.assignee == assignee)
        if problem:
            query = query.where(defects.c.problem_key == problem)
        terms = search_terms(search or "")
        indexed = [t for t in terms if len(t) >= 3]
        if indexed and self.dialect == "sqlite":  # the FTS5 trigram index narrows, LIKE below is exact
            match = " AND ".join('"' + t.replace('"', '""') + '"' for t in indexed)
            query = query.where(literal_column("defects.rowid").in_(
                text("SELECT rowid FROM defects_fts WHERE defects_fts MATCH :match").bindparams(match=match)))
        for term in terms:
            like = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(defects.c.search.like(like, escape="\\"))
        if breached:
            at = time.time() if now is None else now
            query = query.where(defects.c.state.in_(OPEN_STATES), defects.c.resolve_due < at)
        if sort not in self.SORTS:
            raise DefectError(f"unknown sort '{sort}'", hint="use one of " + ", ".join(self.SORTS))
        column = self.SORTS[sort]
        if column is None:
            query = query.order_by(defects.c.priority, defects.c.score.desc(), defects.c.first_seen, defects.c.key)
        else:
            query = query.order_by(defects.c[column].is_(None), defects.c[column], defects.c.priority, defects.c.key)
        if limit:
            query = query.limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def runs(self) -> builtins.list[dict[str, Any]]:
        """The runs that have defects: run id, rollout, mode and how many (newest first)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(defects.c.run_id, func.max(defects.c.rollout), func.max(defects.c.mode),
                                       func.count(), func.max(defects.c.created_at))
                                .group_by(defects.c.run_id).order_by(func.max(defects.c.created_at).desc())).all()
        return [{"run_id": r[0], "rollout": r[1], "mode": r[2], "defects": int(r[3])} for r in rows]

    def counts(self, run_id: str | None = None) -> dict[str, int]:
        query = select(defects.c.state, func.count()).group_by(defects.c.state)
        if run_id:
            query = query.where(defects.c.run_id == run_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {str(state): int(n) for state, n in rows}

    def facets(self, run_id: str | None = None) -> dict[str, builtins.list[str]]:
        """Values for the list's filters."""
        where = defects.c.run_id == run_id if run_id else true()
        with self.engine.connect() as conn:
            locs = conn.execute(select(defects.c.location_id).where(where).distinct()).scalars().all()
            cats = conn.execute(select(defects.c.category).where(where).distinct()).scalars().all()
        return {"location": sorted(x for x in locs if x), "category": sorted(cats), "status": list(STATES),
                "priority": ["1", "2", "3", "4"]}

    def history(self, key: str) -> builtins.list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(history).where(history.c.defect_key == key).order_by(history.c.id)).mappings()
            return [dict(r) for r in rows]

    def observations(self, key: str | None = None, *, target: str | None = None,
                     source: str | None = None, limit: int = 200) -> builtins.list[dict[str, Any]]:
        query = select(observations)
        if key:
            query = query.where(observations.c.defect_key == key)
        if target:
            keys = select(defects.c.key).where(defects.c.target == target)
            query = query.where(or_(observations.c.defect_key.in_(keys),
                                    observations.c.obs_id.like(f"probe:%:{target}")))
        if source:
            query = query.where(observations.c.source == source)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(observations.c.observed_at.desc()).limit(limit)).mappings()
            return [dict(r) for r in rows]

    def problems(self, run_id: str | None = None) -> builtins.list[dict[str, Any]]:
        query = select(problems).order_by(problems.c.priority, problems.c.defects.desc())
        if run_id:
            query = query.where(problems.c.run_id == run_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings()
            return [dict(r) for r in rows]

    def _change(self, key: str, actor: str, action: str, note: str = "", **values: Any) -> dict[str, Any]:
        now = time.time()
        with self.engine.begin() as conn:
            self._write_lock(conn)
            row = conn.execute(select(defects).where(defects.c.key == key)).mappings().first()
            if row is None:
                raise DefectError(f"no defect {key}", hint="list them with `bigbang defects list`")
            to_state = values.get("state")
            if to_state is not None and to_state != row["state"] and to_state not in TRANSITIONS[row["state"]]:
                allowed = ", ".join(TRANSITIONS[row["state"]])
                raise DefectError(f"defect {key} is {row['state']}; it can move to {allowed}, not {to_state}")
            if to_state in ("resolved", "closed") and row["state"] in OPEN_STATES:
                values["resolved_at"] = now
            elif to_state in OPEN_STATES:
                values["resolved_at"] = None
            if row["responded_at"] is None and not actor.startswith(MACHINE_ACTORS):
                values["responded_at"] = now  # the SLA's first response
            conn.execute(update(defects).where(defects.c.key == key).values(
                updated_at=now, version=defects.c.version + 1, **values))
            conn.execute(insert(history).values(self._hist(key, now, actor, action, row["state"],
                                                           to_state or row["state"], note[:MAX_TEXT])))
        return self.require(key)

    def assign(self, key: str, assignee: str, actor: str, accounts: Collection[str] | None = None) -> dict[str, Any]:
        """Assign to a support account; with `accounts` (the rollout's support staff) any other name is refused."""
        assignee = assignee.strip()[:120]
        if not assignee:
            raise DefectError("give the assignee's name")
        if accounts is not None and assignee not in accounts:
            known = ", ".join(sorted(accounts)) or "none (add them to rollout.staff with role support)"
            raise DefectError(f"'{assignee}' is not a support account", hint=f"support accounts: {known}")
        row = self.require(key)
        state = "triaged" if row["state"] == "new" else row["state"]
        return self._change(key, actor, "assigned", f"assigned to {assignee}", assignee=assignee, state=state)

    def comment(self, key: str, note: str, actor: str) -> dict[str, Any]:
        if not note.strip():
            raise DefectError("a comment needs some text")
        return self._change(key, actor, "comment", note.strip())

    def set_state(self, key: str, state: str, actor: str, note: str = "") -> dict[str, Any]:
        if state not in STATES:
            raise DefectError(f"unknown state '{state}'", hint="use one of " + ", ".join(STATES))
        if self.require(key)["state"] == state:
            raise DefectError(f"defect {key} is already {state}")
        action = "resolved" if state == "resolved" else "state"
        return self._change(key, actor, action, note.strip(), state=state)  # the history row has the states

    def mark_fixed(self, key: str, note: str, actor: str) -> dict[str, Any]:
        """A technician fixed it by hand: in progress until a passing probe verifies the fix (then resolved)."""
        if not note.strip():
            raise DefectError("say what was fixed")
        row = self.require(key)
        state = "in_progress" if row["state"] in OPEN_STATES else row["state"]
        return self._change(key, actor, "fixed", note.strip(), state=state)

    def resolve(self, key: str, note: str, actor: str) -> dict[str, Any]:
        return self.set_state(key, "resolved", actor, note or "resolved")

    def bulk(self, keys: Sequence[str], action: str, value: str, actor: str,
             accounts: Collection[str] | None = None) -> tuple[builtins.list[str], builtins.list[str]]:
        """assign / state / comment on many defects; returns (done keys, 'KEY: why not' lines)."""
        done: builtins.list[str] = []
        refused: builtins.list[str] = []
        for key in dict.fromkeys(k.strip() for k in keys if k.strip()):
            try:
                if action == "assign":
                    self.assign(key, value, actor, accounts)
                elif action == "state":
                    self.set_state(key, value, actor)
                elif action == "comment":
                    self.comment(key, value, actor)
                else:
                    raise DefectError(f"unknown bulk action '{action}'", hint="use assign, state or comment")
                done.append(key)
            except DefectError as exc:
                refused.append(f"{key}: {exc}")
        return done, refused

    def link(self, key: str, other: str, actor: str) -> None:
        """Say two defects are related (both keep their own state); shown in both histories."""
        a, b = self.require(key), self.require(other)
        if a["key"] == b["key"]:
            raise DefectError("a defect cannot be linked to itself")
        if a["run_id"] != b["run_id"]:
            raise DefectError(f"{key} and {other} belong to different runs; a queue never mixes runs")
        self._change(key, actor, "linked", f"related to {other}")
        self._change(other, actor, "linked", f"related to {key}")

    def merge(self, duplicate: str, into: str, actor: str) -> dict[str, Any]:
        """Close `duplicate` as a duplicate of `into` (its sightings keep counting there)."""
        dup, main = self.require(duplicate), self.require(into)
        if dup["key"] == main["key"]:
            raise DefectError("a defect cannot be merged into itself")
        if dup["run_id"] != main["run_id"]:
            raise DefectError(f"{duplicate} and {into} belong to different runs; a queue never mixes runs")
        if main.get("duplicate_of"):
            raise DefectError(f"{into} is itself a duplicate of {main['duplicate_of']}; merge into that one")
        state = "closed" if dup["state"] != "closed" else None
        values: dict[str, Any] = {"duplicate_of": main["key"]}
        if state:
            values["state"] = state
        self._change(duplicate, actor, "merged", f"duplicate of {into}", **values)
        with self.engine.begin() as conn:
            conn.execute(update(defects).where(defects.c.key == into).values(
                occurrences=defects.c.occurrences + dup["occurrences"], version=defects.c.version + 1,
                updated_at=time.time()))
            conn.execute(insert(history).values(self._hist(into, time.time(), actor, "merged", None, None,
                                                           f"{duplicate} merged into this defect")))
        return self.require(into)

    # ------------------------------------------------------------ end-user reports
    def add_reports(self, rows: Sequence[dict[str, Any]], run_id: str | None = None) -> int:
        """Store validated reports once per report_id, in `run_id`'s queue; returns how many were new."""
        if not rows:
            return 0
        now = time.time()
        ids = [r["report_id"] for r in rows]
        with self.engine.begin() as conn:
            known: set[str] = set()
            for chunk in _chunks(ids):
                known.update(conn.execute(select(reports.c.report_id).where(reports.c.report_id.in_(chunk))).scalars())
            new: dict[str, dict[str, Any]] = {}
            for r in rows:
                if r["report_id"] not in known:
                    new.setdefault(r["report_id"], {"contact": None, "reference": None, **r, "run_id": run_id,
                                                    "received_at": now, "processed_at": None})
            if new:
                conn.execute(insert(reports), list(new.values()))
        return len(new)

    def admit_report(self, keys: Sequence[str], limit: int, *, window: float = 3600.0,
                     now: float | None = None) -> float | None:
        """Count one self-service report against each of `keys` (its device, its source address) if each
        had fewer than `limit` in the last `window` seconds. None: admitted; else refused, and the time
        (epoch) the next one will be admitted. Every field-app process on this database shares the count."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            # One admission at a time, so that two processes cannot both take the last place.
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADMISSION_LOCK})
            conn.execute(delete(report_admissions).where(report_admissions.c.at <= now - window))  # SQLite: its write lock
            retry_at: float | None = None
            for key in keys:
                latest = conn.execute(select(report_admissions.c.at).where(report_admissions.c.key == key)
                                      .order_by(report_admissions.c.at.desc()).limit(limit)).scalars().all()
                if len(latest) >= limit:  # a place frees up when the oldest of the last `limit` leaves the window
                    retry_at = max(retry_at or 0.0, latest[-1] + window)
            if retry_at is None:
                conn.execute(insert(report_admissions), [{"key": key, "at": now} for key in keys])
        return retry_at

    def pending_reports(self, run_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """Reports not filed yet: those of `run_id` (and, for compatibility, those without a run)."""
        query = select(reports).where(reports.c.processed_at.is_(None))
        if run_id:
            query = query.where(or_(reports.c.run_id == run_id, reports.c.run_id.is_(None)))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(reports.c.reported_at)).mappings()
            return [dict(r) for r in rows]

    def mark_reports_processed(self, report_ids: Sequence[str]) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            for chunk in _chunks(list(report_ids)):
                conn.execute(update(reports).where(reports.c.report_id.in_(chunk)).values(processed_at=now))

    # ------------------------------------------------------------ collections
    def start_collection(self, run_id: str | None) -> int:
        with self.engine.begin() as conn:
            return conn.execute(insert(collections).values(run_id=run_id, started_at=time.time())
                                .returning(collections.c.id)).scalar_one()

    def finish_collection(self, collection_id: int, summary: dict[str, Any], errors: builtins.list[str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(collections).where(collections.c.id == collection_id).values(
                finished_at=time.time(), summary=json.dumps(summary, sort_keys=True, default=str),
                errors=json.dumps(errors)))

    def collections(self, limit: int = 20) -> builtins.list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(collections).order_by(collections.c.id.desc()).limit(limit)).mappings()
            out = []
            for r in rows:
                d = dict(r)
                d["summary"], d["errors"] = json.loads(d["summary"]), json.loads(d["errors"])
                out.append(d)
            return out

    def collection_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(collections)).scalar_one()

    # ------------------------------------------------------------ external tickets
    def unsynced(self, system: str) -> builtins.list[dict[str, Any]]:
        """Defects whose latest version has not reached `system` yet, oldest first."""
        query = (select(defects, tickets.c.external_id, tickets.c.synced_version, tickets.c.synced_history_id)
                 .select_from(defects.outerjoin(tickets, and_(tickets.c.defect_key == defects.c.key,
                                                              tickets.c.system == system)))
                 .where(or_(tickets.c.defect_key.is_(None), tickets.c.synced_version < defects.c.version))
                 .order_by(defects.c.priority, defects.c.created_at, defects.c.key))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def ticket(self, key: str, system: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(tickets).where(and_(tickets.c.defect_key == key, tickets.c.system == system))
                               ).mappings().first()
        return dict(row) if row else None

    def history_since(self, key: str, after_id: int) -> builtins.list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(history).where(and_(history.c.defect_key == key, history.c.id > after_id))
                                .order_by(history.c.id)).mappings()
            return [dict(r) for r in rows]

    def record_ticket(self, key: str, system: str, *, external_id: str | None, synced_version: int | None = None,
                      synced_history_id: int | None = None, error: str | None = None) -> None:
        """Remember what reached the ticket system (or why it did not)."""
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(select(tickets).where(and_(tickets.c.defect_key == key, tickets.c.system == system))
                               ).mappings().first()
            values: dict[str, Any] = {"updated_at": now, "last_error": error}
            if external_id is not None:
                values["external_id"] = external_id
            if synced_version is not None:
                values["synced_version"] = synced_version
            if synced_history_id is not None:
                values["synced_history_id"] = synced_history_id
            if row is None:
                conn.execute(insert(tickets).values(defect_key=key, system=system, attempts=1 if error else 0,
                                                    **{"synced_version": 0, "synced_history_id": 0, **values}))
            else:
                if error:
                    values["attempts"] = row["attempts"] + 1
                conn.execute(update(tickets).where(and_(tickets.c.defect_key == key, tickets.c.system == system))
                             .values(**values))
