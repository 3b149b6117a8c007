"""The field app and the printouts at the reference size (Holstebro: 150 locations, 3,500 devices).

    python bench/field.py [--size holstebro] [--pdfs 10]

Prints one JSON line per measurement: the ops board and the largest location's page (median latency
over 20 requests through the ASGI app, and bytes sent: what a phone on a weak connection downloads),
and checklist PDFs (seconds per location, pages).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from bigbang.checklists import write_checklists  # noqa: E402
from bigbang.inventory.generate import PRESETS, generate, write  # noqa: E402
from bigbang.session import RunOptions, RunSession  # noqa: E402
from bigbang.web.app import create_app  # noqa: E402
from bigbang.web.passwords import hash_password  # noqa: E402


def timed(client: TestClient, path: str, n: int = 20) -> tuple[float, int]:
    times, size = [], 0
    client.headers["Accept-Encoding"] = "gzip"
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, (path, r.status_code)
        size = r.num_bytes_downloaded  # bytes on the wire (gzip)
    return statistics.median(times) * 1000, size


def token_of(client: TestClient) -> str:
    return client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="holstebro", choices=sorted(PRESETS))
    parser.add_argument("--pdfs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp) / "inventory"
        write(generate(PRESETS[args.size]), inv)
        (inv / "zz-staff.yaml").write_text(
            f"rollout:\n  staff:\n    - {{id: bench-ops, name: Bench, role: ops_lead, "
            f"password_hash: '{hash_password('bench-pass')}'}}\n")
        session = RunSession.start(inv, RunOptions(mode="rehearsal"), ledger_url=f"sqlite:///{tmp}/l.db")
        app = create_app(inv, session.ledger.url, session.run_id, lang="en")
        client = TestClient(app)
        token = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
        client.post("/login", data={"username": "bench-ops", "password": "bench-pass", "csrf_token": token})
        largest = max(session.inventory.locations, key=lambda loc: len(loc.devices))
        ms, size = timed(client, "/board")
        print(json.dumps({"bench": "field.board", "size": args.size, "locations": len(session.inventory.locations),
                          "median_ms": round(ms, 1), "bytes": size}))
        ms, size = timed(client, f"/l/{largest.id}")
        print(json.dumps({"bench": "field.location_page", "size": args.size, "devices": len(largest.devices),
                          "median_ms": round(ms, 1), "bytes": size}))
        # One tap: the small JSON answer field.js gets (the no-JavaScript form gets a redirect and the page)
        page = client.get(f"/l/{largest.id}").text
        item = page.split('name="item" value="')[1].split('"')[0]
        times, sizes = [], []
        for i in range(20):
            t0 = time.perf_counter()
            r = client.post(f"/l/{largest.id}/check", headers={"X-Bigbang-Fetch": "1"},
                            data={"csrf_token": token_of(client), "request_key": f"benchtap{i:04d}", "item": item,
                                  "action": "check" if i % 2 == 0 else "uncheck"})
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200 and r.json()["ok"], r.text
            sizes.append(len(r.content))
        times.sort()
        print(json.dumps({"bench": "field.tap_answer", "size": args.size, "devices": len(largest.devices),
                          "median_ms": round(times[len(times) // 2], 1), "bytes": max(sizes),
                          "page_bytes": len(page.encode())}))
        ids = [loc.id for loc in session.inventory.locations[: args.pdfs]]
        t = time.perf_counter()
        files = write_checklists(session.inventory, session.plan, Path(tmp) / "print", lang="da",
                                 base_url="https://field.example", only=ids)
        wall = time.perf_counter() - t
        pages = [int(next(line.split()[-1] for line in subprocess.run(
            ["pdfinfo", str(f.pdf)], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Pages:"))) for f in files]
        devices = sum(len(session.inventory.location_by_id[i].devices) for i in ids)
        print(json.dumps({"bench": "field.checklist_pdf", "size": args.size, "locations": len(ids),
                          "devices": devices, "s_per_location": round(wall / len(ids), 2),
                          "pages_total": sum(pages)}))
        session.close()


if __name__ == "__main__":
    main()
