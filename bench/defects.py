"""Benchmark: triage 10,000 incoming end-user reports against the Holstebro inventory.

Generates the Holstebro preset (`bigbang inventory generate --preset holstebro`), writes a CSV of
reports (skewed towards some devices and categories, so there are repeats to deduplicate and
problems to group, plus ~1% bad rows), then measures validating the CSV, storing the reports and
triaging them into the embedded queue (dedup, grouping, prioritising, writing). One JSON line per
measurement. Target: under 10 s for the whole triage on this machine.

Then search: a queue of 100,000 defects (one run, the Holstebro devices, users with names and
phones) on SQLite and on PostgreSQL (a throw-away cluster from tests/peers/postgres.py, or
--postgres URL), searched by hostname, serial, user name, phone, location, defect key and free
text; median and worst of 5 runs per query. Target: 200 ms on PostgreSQL.

    python bench/defects.py [--reports 10000] [--ledger URL] [--search-defects 100000] [--postgres URL]
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
from bigbang.inventory.model import EndUser  # noqa: E402
from bigbang.store.ledger import Ledger  # noqa: E402
from bigbang.defects.triage import TargetIndex, defect_key  # noqa: E402
from bigbang.store.defects import search_text  # noqa: E402
from bigbang.store.schema import defects as defects_table  # noqa: E402

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


FIRST = ["Anne", "Bo", "Camilla", "Dorte", "Erik", "Frida", "Gustav", "Hanne", "Ib", "Jens", "Karen", "Lars"]
LAST = ["Jensen", "Nielsen", "Hansen", "Pedersen", "Andersen", "Christensen", "Larsen", "Sørensen", "Madsen"]


def with_users(inventory):
    """The inventory with a named user (and a phone) for every workstation: what the search finds people by."""
    users = []
    locations = []
    n = 0
    for loc in inventory.locations:
        devices = []
        for ws in loc.workstations:
            n += 1
            uid = f"u{n:05d}"
            users.append({"id": uid, "name": f"{FIRST[n % len(FIRST)]} {LAST[(n // 7) % len(LAST)]} {n}",
                          "phone": f"+45 97 {n // 10000 % 100:02d} {n // 100 % 100:02d} {n % 100:02d}"})
            devices.append(ws.model_copy(update={"user": uid}))
        locations.append(loc.model_copy(update={"workstations": devices}))
    support = inventory.support.model_copy(update={"users": [EndUser(**u) for u in users]})
    return inventory.model_copy(update={"locations": locations, "support": support})


def load_defects(queue: DefectQueue, inventory, count: int, run_id: str) -> dict[str, str]:
    """`count` defects of one run written straight into the table (as apply() would have made them)."""
    targets = TargetIndex(inventory)
    devices = [(loc, d) for loc in inventory.locations for d in loc.devices]
    rng = random.Random(11)
    now = time.time()
    rows = []
    probe = {}
    for i in range(count):
        loc, dev = devices[i % len(devices)]
        c = i // len(devices) % len(CATEGORIES)
        sig = f"user.{CATEGORIES[c]}#{i}"
        info = targets.resolve(dev.hostname, loc.id)
        row = dict(key=defect_key(dev.hostname, sig, run_id), problem_key=None, target=dev.hostname,
                   target_kind=info.kind, location_id=loc.id, model=info.model, check_name=f"user.{CATEGORIES[c]}",
                   signature=sig, category=CATEGORIES[c], source="user",
                   title=f"{dev.hostname}: user report ({CATEGORIES[c]}): {PHRASES[c]}", message=f"{PHRASES[c]} ({i})",
                   state=rng.choice(["new", "triaged", "in_progress", "resolved"]), priority=rng.randint(1, 4),
                   score=1.0, affected=1, assignee=None, occurrences=1, reopened=0, first_seen=now - i,
                   last_seen=now - i, resolved_at=None, created_at=now, updated_at=now, version=1, run_id=run_id,
                   rollout=inventory.rollout.name, mode="rehearsal", user_id=info.user_id or None,
                   user_name=info.user_name or None, user_phone=info.user_phone or None, reporter=f"user{i % 3000}",
                   reporter_contact=None, search="", priority_reason="", response_due=now, resolve_due=now + 86400,
                   responded_at=None, duplicate_of=None)
        row["search"] = search_text(row, info)
        rows.append(row)
        if i == count // 2:
            probe = {"hostname": dev.hostname, "serial": info.serial, "user name": info.user_name,
                     "phone": info.user_phone, "phone digits": "".join(ch for ch in info.user_phone if ch.isdigit())[-8:],
                     "location": loc.id, "key": row["key"], "free text": PHRASES[c].split()[-2] + " " + PHRASES[c].split()[-1]}
    with queue.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(defects_table.insert(), rows[start:start + 5000])
        if queue.dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE defects")
    return probe


def search_bench(label: str, url: str, inventory, count: int) -> None:
    queue = DefectQueue(Ledger(url).engine)
    t0 = time.perf_counter()
    probe = load_defects(queue, inventory, count, "bench-search")
    emit("search_load", time.perf_counter() - t0, dialect=label, defects=count)
    for what, query in probe.items():
        times = []
        found = 0
        for _ in range(5):
            t = time.perf_counter()
            found = len(queue.list(run_id="bench-search", search=query, state="all", limit=200))
            times.append(time.perf_counter() - t)
        times.sort()
        emit("search", times[2], dialect=label, by=what, query=query, found=found, defects=count,
             worst_seconds=round(times[-1], 3), target_seconds=0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--ledger", help="ledger URL (default: a temporary SQLite file)")
    parser.add_argument("--search-defects", type=int, default=100_000, help="queue size for the search (0: skip)")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL for the search (default: a throw-away cluster)")
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

        if args.search_defects:
            people = with_users(inventory)
            search_bench("sqlite", f"sqlite:///{tmp}/search.db", people, args.search_defects)
            cluster = None
            url = args.postgres
            if url is None:
                from tests.peers.postgres import PostgresCluster

                cluster = PostgresCluster().start()
                url = cluster.create_database()
            try:
                search_bench("postgresql", url, people, args.search_defects)
            finally:
                if cluster is not None:
                    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
