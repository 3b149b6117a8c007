"""Rehearse the reference sizes end to end through the real CLI, with zero-duration simulated steps.

    python bench/rehearsal.py                    # both sizes
    python bench/rehearsal.py --size holstebro   # or hoglandet

Prints one JSON line per size: size, wall_s (the whole `bigbang run` process, Prefect's ephemeral
start included), device_steps, steps (all planned steps), overhead_ms_per_step (wall / steps),
peak_rss_mb (the CLI process plus its children, e.g. the ephemeral Prefect server, sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigbang.inventory import load_inventory  # noqa: E402
from bigbang.inventory.generate import PRESETS, generate, write  # noqa: E402
from bigbang.plan import build_plan  # noqa: E402


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_size(name: str, workdir: Path, prefect_home: Path) -> dict:
    inventory_dir = workdir / name
    if not inventory_dir.exists():
        write(generate(PRESETS[name], seed=1), inventory_dir)
    plan = build_plan(load_inventory(inventory_dir))
    steps = plan.step_count
    device_steps = sum(1 for s in plan.steps() if s.kind.startswith(("ws.", "tc.")))
    env = dict(os.environ, PYTHONPATH=str(ROOT), BIGBANG_HOME=str(workdir / f"state-{name}"),
               BIGBANG_REPORTS=str(workdir / "reports"), PREFECT_HOME=str(prefect_home))
    env.pop("PREFECT_API_URL", None)
    fresh_db = not (prefect_home / "prefect.db").exists()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bigbang", "run", str(inventory_dir), "--zero-duration",
                             "--quiet", "--failure-rate", "0"], env=env, cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_kb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: bigbang run failed ({proc.returncode})\n{out}\n{err}")
    return {"size": name, "wall_s": round(wall, 2), "device_steps": device_steps, "steps": steps,
            "overhead_ms_per_step": round(1000 * wall / steps, 3), "peak_rss_mb": round(peak[0] / 1024, 1),
            "locations": len(plan.locations), "servers": len(plan.servers), "prefect_db": "fresh" if fresh_db else "existing"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("holstebro", "hoglandet"), action="append")
    parser.add_argument("--workdir", help="keep inventories and ledgers here (default: a temp dir)")
    args = parser.parse_args()
    sizes = args.size or ["holstebro", "hoglandet"]
    with tempfile.TemporaryDirectory(prefix="bigbang-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        prefect_home = workdir / "prefect-home"
        for name in sizes:
            print(json.dumps(run_size(name, workdir, prefect_home)), flush=True)


if __name__ == "__main__":
    main()
