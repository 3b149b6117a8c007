"""Post-rollout defects: collected from the ledger, technicians, a probe and end users,
deduplicated, prioritised and filed in the support queue (embedded in `bigbang.store.defects`,
or Request Tracker)."""
