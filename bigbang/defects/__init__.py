"""Post-rollout defects: collected from the ledger, technicians, a probe and end users,
deduplicated, prioritised and filed in the support queue (embedded, or Request Tracker)."""

from bigbang.defects.store import OPEN_STATES, STATES, DefectError, DefectQueue
from bigbang.defects.triage import Observation

__all__ = ["DefectError", "DefectQueue", "OPEN_STATES", "Observation", "STATES"]
