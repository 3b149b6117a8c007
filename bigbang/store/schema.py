"""The schema of the run database: every table bigbang keeps, in one place.

Only `bigbang.store` reads and writes these tables; everything else asks the store's typed
methods. SQLite by default, PostgreSQL for shared use (the same schema on both).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, Text

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
    Column("run_id", String(80)),
)

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
