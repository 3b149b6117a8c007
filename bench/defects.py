"""Benchmark: triage 10,000 incoming end-user reports against the Holstebro inventory.

Generates the Holstebro preset (`bigbang inventory generate --preset holstebro`), writes a CSV of
reports (skewed towards some devices and categories, so there are repeats to deduplicate and
problems to group, plus ~1% bad rows), then measures validating the CSV, storing the reports and
triaging them into the embedded queue (dedup, grouping, prioritising, writing). One JSON line per
measurement. Target: under 10 s for the whole triage on this machine.

    python bench/defects.py [--reports 10000] [--ledger URL]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bigbang.defects.sources import parse_reports_csv, report_observations  # noqa: E402
from bigbang.store.defects import DefectQueue  # noqa: E402
from bigbang.inventory import load_inventory  # noqa: E402
from bigbang.store.ledger import Ledger  # noqa: E402

CATEGORIES = ["login", "printer", "network", "citrix", "audio", "display", "keyboard", "outlook", "slow", "other"]
PHRASES = ["cannot sign in", "printer offline", "no network after restart", "Citrix session freezes",
           "no sound in Teams", "second screen black", "keyboard layout wrong", "Outlook asks for password",
           "very slow since Monday", "something else is broken"]


def reports_csv(inventory, count: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    devices = [(loc.id, d.hostname) for loc in inventory.locations for d in loc.devices]
    hot = rng.sample(devices, k=max(1, len(devices) // 10))  # a tenth of the devices get most reports
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["reported_at", "device", "location", "category", "text", "reporter"])
    for i in range(count):
        loc, host = rng.choice(hot) if rng.random() < 0.6 else rng.choice(devices)
        c = min(int(rng.expovariate(0.5)), len(CATEGORIES) - 1)
        when = f"2026-11-30T{7 + i * 10 // count:02d}:{i % 60:02d}:{(i * 7) % 60:02d}"
        if i % 100 == 99:  # about 1% bad rows: unknown device
            host = f"nope-{i}"
        writer.writerow([when, host, loc if rng.random() < 0.5 else "", CATEGORIES[c],
                         f"{PHRASES[c]} (#{i})", f"user{rng.randrange(3000)}"])
    return out.getvalue()


def emit(name: str, seconds: float, **extra) -> None:
    print(json.dumps({"bench": "defects", "measure": name, "seconds": round(seconds, 3), **extra}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--ledger", help="ledger URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bigbang-bench-defects-") as tmp:
        inv_dir = Path(tmp) / "holstebro"
        subprocess.run([sys.executable, "-m", "bigbang", "inventory", "generate", "--preset", "holstebro",
                        "--out", str(inv_dir)], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parent.parent)
        inventory = load_inventory(inv_dir)
        content = reports_csv(inventory, args.reports)
        queue = DefectQueue(Ledger(args.ledger or f"sqlite:///{tmp}/ledger.db").engine)

        t0 = time.perf_counter()
        parsed = parse_reports_csv(content, inventory)
        t1 = time.perf_counter()
        emit("validate_csv", t1 - t0, rows=len(parsed.rows), refused=len(parsed.errors))
        stored = queue.add_reports(parsed.rows)
        t2 = time.perf_counter()
        emit("store_reports", t2 - t1, stored=stored)
        pending = queue.pending_reports()
        summary = queue.apply(report_observations(pending), inventory, run_id="bench")
        queue.mark_reports_processed([r["report_id"] for r in pending])
        t3 = time.perf_counter()
        emit("triage", t3 - t2, observations=summary.observations, defects=summary.created,
             problems=summary.problems)
        emit("total", t3 - t0, reports=args.reports, target_seconds=10, dialect=queue.dialect)

        # The next hour: as many reports again onto a queue that already holds the first batch.
        more = parse_reports_csv(reports_csv(inventory, args.reports, seed=8), inventory)
        t4 = time.perf_counter()
        queue.add_reports(more.rows)
        pending = queue.pending_reports()
        summary = queue.apply(report_observations(pending), inventory, run_id="bench")
        queue.mark_reports_processed([r["report_id"] for r in pending])
        emit("second_batch_store_and_triage", time.perf_counter() - t4, created=summary.created,
             updated=summary.updated, problems=summary.problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())
