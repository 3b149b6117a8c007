"""The run database: the only code that touches its tables (schema in `bigbang.store.schema`).

`Ledger` owns runs, frozen plans, steps, locations, events, sign-offs, problems and the
simulated devices' state; `FieldStore` the technicians' check-offs and audit trail;
`DefectQueue` the support queue. Derived numbers (a location's failed devices, what is
finished) are computed here and nowhere else.
"""

from bigbang.store.ledger import Ledger, StepRecord, default_ledger_url, default_state_dir, now, worker_name

__all__ = ["Ledger", "StepRecord", "default_ledger_url", "default_state_dir", "now", "worker_name"]
