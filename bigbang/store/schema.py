"""The schema of the run database: every table bigbang keeps, in one place.

Only `bigbang.store` reads and writes these tables; everything else asks the store's typed
methods. SQLite by default, PostgreSQL for shared use (the same schema on both).
"""

from __future__ import annotations

from sqlalchemy import DDL, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, event

metadata = MetaData()

# ---------------------------------------------------------------- runs and their steps

runs = Table(
    "runs", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("rollout", String(200), nullable=False),
    Column("inventory", Text, nullable=False),
    Column("inventory_digest", String(32), nullable=False),
    Column("plan_digest", String(32), nullable=False),
    Column("mode", String(20), nullable=False),
    Column("options", Text, nullable=False, default="{}"),
    Column("status", String(20), nullable=False),
    Column("halted_reason", Text),
    Column("halted_clock", Float),  # when on the run's clock the rollout halted
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
    # The run's clock (bigbang.clock): "wall" or "simulated"; the wall time its timeline counts from;
    # and for playback the real moment that matches `pace_clock` (set by the first unit that starts).
    Column("clock", String(20), nullable=False, default="wall"),
    Column("clock_origin", Float, nullable=False),
    Column("pace_real", Float),
    Column("pace_clock", Float, nullable=False, default=0.0),
    Column("plan_version", Integer, nullable=False, default=1),
)

steps = Table(
    "steps", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("step_id", String(200), primary_key=True),
    Column("scope", String(80), nullable=False, index=True),  # location id, or "servers"
    Column("target", String(120), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("changed", Boolean, nullable=False, default=False),
    Column("message", Text, nullable=False, default=""),
    Column("facts", Text, nullable=False, default="{}"),
    Column("started_at", Float),  # wall time
    Column("finished_at", Float),
    Column("clock_start", Float),  # on the run's clock: simulated in rehearsals, real seconds live
    Column("clock_end", Float),
    Column("worker", String(120)),
)

locations = Table(
    "locations", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("location_id", String(80), primary_key=True),
    Column("status", String(40), nullable=False),  # completed_with_failures: 23 characters
    Column("reason", Text, nullable=False, default=""),
    Column("devices", Integer, nullable=False, default=0),
    Column("devices_failed", Integer, nullable=False, default=0),
    Column("devices_skipped", Integer, nullable=False, default=0),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("clock_start", Float),
    Column("clock_end", Float),
    Column("worker", String(120)),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(80), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("subject", String(200), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
)

# A technician's sign-off releases a location's gate (written by the field app or `bigbang signoff`).
signoffs = Table(
    "signoffs", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("location_id", String(80), primary_key=True),
    Column("signed_by", String(120), nullable=False),
    Column("signed_at", Float, nullable=False),
    Column("note", Text, nullable=False, default=""),
)

# Problems technicians note in the field (field app or CLI); the defect flow turns them into defects.
# `problem_id` is the client's idempotency key: a retried request never files a problem twice.
problems = Table(
    "problems", metadata,
    Column("problem_id", String(64), primary_key=True),
    Column("run_id", String(80), nullable=False, index=True),
    Column("location_id", String(80), nullable=False),
    Column("device", String(120)),
    Column("category", String(60), nullable=False),
    Column("text", Text, nullable=False),
    Column("reported_by", String(120), nullable=False),
    Column("reported_at", Float, nullable=False),
    Column("source", String(40), nullable=False, default="field"),
)

# Side effects of the simulated connector: one row per applied change, so a
# rehearsal's "devices" are changed exactly once even across crashes and workers.
sim_effects = Table(
    "sim_effects", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("step_id", String(200), primary_key=True),
    Column("applied_at", Float, nullable=False),
    Column("worker", String(120)),
)

# Who executes a run (scope "run") or one of its locations (scope "location:ID") now. `token` grows by one
# with every acquisition: a write carrying an older token comes from a holder that lost the lease (it
# stalled past `expires_at`, or was taken over) and is refused in the same transaction (fencing).
leases = Table(
    "leases", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("scope", String(120), primary_key=True),
    Column("owner", String(120)),  # HOST:PID; None once released
    Column("token", Integer, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# A changing step about to touch a device: written (and committed) before the connector is called, settled
# in the transaction that records the step's outcome. An open intent found on resume means the process died
# in between: the device is asked what was applied before anything is redone.
intents = Table(
    "intents", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("step_id", String(200), primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("token", Integer),  # the fencing token of the lease it was written under
    Column("owner", String(120), nullable=False),
    Column("recorded_at", Float, nullable=False),
    Column("settled_at", Float),
    Column("outcome", String(20)),
)
# The open intents of a run, the few in flight: every location's runner reads them once (a run's whole intents,
# 10,000 and more, scanned each time before). Ledgers made before it get it when next opened (Ledger).
open_intents_index = Index("ix_intents_open", intents.c.run_id, sqlite_where=intents.c.settled_at.is_(None),
                           postgresql_where=intents.c.settled_at.is_(None))

# The frozen plan: what a run does, written once at start (a new version only on an explicit
# `--accept-inventory-changes`). Everyone reads the plan from here, never from the inventory's YAML.
run_plans = Table(
    "run_plans", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("plan_digest", String(32), nullable=False),
    Column("inventory_digest", String(32), nullable=False),
    Column("plan", Text, nullable=False),  # Plan.to_dict() as JSON
    Column("inventory", Text, nullable=False),  # the validated inventory as JSON (secrets are references only)
    Column("created_at", Float, nullable=False),
    Column("note", Text, nullable=False, default=""),
)

# ---------------------------------------------------------------- the field

field_checks = Table(
    "field_checks", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("location_id", String(80), primary_key=True),
    Column("item_id", String(200), primary_key=True),
    Column("checked", Boolean, nullable=False),
    Column("value", String(200)),  # e.g. the serial a technician scanned or typed
    Column("by", String(120), nullable=False),
    Column("at", Float, nullable=False),
)

field_audit = Table(
    "field_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_key", String(80), unique=True),  # the client's idempotency key
    Column("at", Float, nullable=False),
    Column("actor", String(120), nullable=False),
    Column("role", String(20), nullable=False),
    Column("source", String(200), nullable=False),  # where from: "web 10.0.0.7", "cli host"
    Column("action", String(40), nullable=False),
    Column("run_id", String(80), nullable=False, index=True),
    Column("location_id", String(80), nullable=False),
    Column("subject", String(200), nullable=False, default=""),
    Column("detail", Text, nullable=False, default="{}"),
    # The hash chain (bigbang.store.field): each row's hash covers its content and the previous row's hash.
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
)

# The audit trail's head: how many rows it has and the last one's hash, signed (HMAC with the audit key,
# bigbang.store.field). Updated in the transaction of every audit row, so rows removed from the end,
# or removed anywhere with the chain recomputed, no longer match it. One row (id 1).
field_audit_head = Table(
    "field_audit_head", metadata,
    Column("id", Integer, primary_key=True),
    Column("row_count", Integer, nullable=False),
    Column("last_id", Integer, nullable=False),
    Column("last_hash", String(64), nullable=False),
    Column("key_id", String(16)),  # the audit key that signs the head and the rows (None: no key, plain hashes)
    Column("signature", String(64), nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Signed-in field-app sessions, server-side so sign-out revokes them (bigbang.store.sessions).
field_sessions = Table(
    "field_sessions", metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the cookie's random token, never the token
    Column("uid", String(120), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("lang", String(10)),
    Column("source", String(200), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("revoked_at", Float),
)


# ---------------------------------------------------------------- defects

defects = Table(
    "defects", metadata,
    Column("key", String(16), primary_key=True),
    Column("problem_key", String(16), index=True),
    Column("target", String(120), nullable=False, index=True),
    Column("target_kind", String(20), nullable=False),
    Column("location_id", String(80), index=True),
    Column("model", String(120), nullable=False),
    Column("check_name", String(80), nullable=False),
    Column("signature", String(300), nullable=False),
    Column("category", String(60), nullable=False, index=True),
    Column("source", String(20), nullable=False),
    Column("title", String(300), nullable=False),
    Column("message", Text, nullable=False),
    Column("state", String(20), nullable=False, index=True),
    Column("priority", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("affected", Integer, nullable=False),
    Column("assignee", String(120)),
    Column("occurrences", Integer, nullable=False),
    Column("reopened", Integer, nullable=False, default=0),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("resolved_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("version", Integer, nullable=False),
    Column("run_id", String(80), index=True),
    # Added for the support week (issue 14); DefectQueue adds missing columns to older databases.
    Column("rollout", String(200)),  # the rollout's name, from the run's frozen inventory
    Column("mode", String(20)),  # rehearsal | live: the run's mode
    Column("user_id", String(120)),  # the device's user (inventory `user`)
    Column("user_name", String(200)),
    Column("user_phone", String(60)),
    Column("reporter", String(200)),  # who reported it (a user report / a technician), with a contact
    Column("reporter_contact", String(200)),
    Column("search", Text),  # lower-case text of everything one may search by (see DefectQueue.search)
    Column("priority_reason", Text),  # how the score was made, in words
    Column("response_due", Float),  # SLA targets (support.sla), from first_seen
    Column("resolve_due", Float),
    Column("responded_at", Float),  # first human action
    Column("duplicate_of", String(16), index=True),  # merged into this defect
    Column("report_refs", String(400)),  # the reference numbers self-service reporters were given (R-...)
)

# Search on PostgreSQL: a trigram index answers `search LIKE '%term%'` without reading every row.
event.listen(defects, "before_create", DDL("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute_if(dialect="postgresql"))
Index("ix_defects_search_trgm", defects.c.search, postgresql_using="gin",
      postgresql_ops={"search": "gin_trgm_ops"}).ddl_if(dialect="postgresql")
Index("ix_defects_run_state", defects.c.run_id, defects.c.state)
# Search on SQLite: an FTS5 trigram index of the same column (substring matches of 3+ characters),
# kept in step with `defects` by triggers. DefectQueue creates it for databases made before it existed.
SQLITE_SEARCH_DDL = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS defects_fts USING fts5(search, content='defects', content_rowid='rowid', "
    "tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS defects_fts_ai AFTER INSERT ON defects BEGIN "
    "INSERT INTO defects_fts(rowid, search) VALUES (new.rowid, coalesce(new.search, '')); END",
    "CREATE TRIGGER IF NOT EXISTS defects_fts_ad AFTER DELETE ON defects BEGIN "
    "INSERT INTO defects_fts(defects_fts, rowid, search) VALUES ('delete', old.rowid, coalesce(old.search, '')); END",
    "CREATE TRIGGER IF NOT EXISTS defects_fts_au AFTER UPDATE OF search ON defects BEGIN "
    "INSERT INTO defects_fts(defects_fts, rowid, search) VALUES ('delete', old.rowid, coalesce(old.search, '')); "
    "INSERT INTO defects_fts(rowid, search) VALUES (new.rowid, coalesce(new.search, '')); END",
)
for _statement in SQLITE_SEARCH_DDL:
    event.listen(defects, "after_create", DDL(_statement).execute_if(dialect="sqlite"))

observations = Table(
    "defect_observations", metadata,
    Column("obs_id", String(300), primary_key=True),
    Column("defect_key", String(16), nullable=False, index=True),
    Column("source", String(20), nullable=False),
    Column("check_name", String(80), nullable=False),
    Column("failing", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("reporter", String(200), nullable=False, default=""),
    Column("observed_at", Float, nullable=False),
    Column("details", Text, nullable=False, default="{}"),
)

history = Table(
    "defect_history", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("defect_key", String(16), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("actor", String(120), nullable=False),
    Column("action", String(20), nullable=False),  # created, state, assigned, comment, priority, reopened, resolved
    Column("from_state", String(20)),
    Column("to_state", String(20)),
    Column("text", Text, nullable=False, default=""),
)

defect_problems = Table(
    "defect_problems", metadata,
    Column("key", String(16), primary_key=True),
    Column("run_id", String(80), index=True),
    Column("signature", String(300), nullable=False),
    Column("model", String(120), nullable=False),
    Column("category", String(60), nullable=False),
    Column("title", String(300), nullable=False),
    Column("defects", Integer, nullable=False),
    Column("locations", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

# End-user reports (CSV import or the intake endpoint), waiting for the next collection.
reports = Table(
    "defect_reports", metadata,
    Column("report_id", String(64), primary_key=True),
    Column("received_at", Float, nullable=False),
    Column("reported_at", Float, nullable=False),
    Column("device", String(120)),
    Column("location_id", String(80)),
    Column("category", String(60), nullable=False),
    Column("text", Text, nullable=False),
    Column("reporter", String(200), nullable=False, default=""),
    Column("channel", String(20), nullable=False),
    Column("processed_at", Float, index=True),
    Column("run_id", String(80), index=True),  # the run whose queue it belongs to
    Column("contact", String(200)),  # the reporter's phone or e-mail
    Column("reference", String(20)),  # what the reporter is told (self-service form)
)

# Self-service reports accepted, one row per limited key ("device:HOST", "address:IP") and report: the
# rate limit's ledger, shared by every field-app process on this database (bigbang.store.defects).
report_admissions = Table(
    "defect_report_admissions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False),
    Column("at", Float, nullable=False, index=True),
    Index("ix_defect_report_admissions_key_at", "key", "at"),
)

# One row per defect and external ticket system: what was pushed there, and the last failure.
tickets = Table(
    "defect_tickets", metadata,
    Column("defect_key", String(16), primary_key=True),
    Column("system", String(40), primary_key=True),
    Column("external_id", String(80)),
    Column("synced_version", Integer, nullable=False, default=0),
    Column("synced_history_id", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)

collections = Table(
    "defect_collections", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(80)),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("summary", Text, nullable=False, default="{}"),
    Column("errors", Text, nullable=False, default="[]"),
)

# A single row taken as a write lock by apply() on SQLite (PostgreSQL uses an advisory lock).
lock = Table("defect_lock", metadata, Column("id", Integer, primary_key=True), Column("n", Integer, nullable=False))


# ---------------------------------------------------------------- schedules

run_schedules = Table(
    "run_schedules", metadata,
    Column("run_id", String(80), primary_key=True),
    Column("schedule", Text, nullable=False),  # the stored schedule.json, as the run used it
    Column("saved_at", Float, nullable=False),
)
