"""Rehearse the reference sizes end to end through the real CLI, with zero-duration simulated steps.

    python bench/rehearsal.py                    # demo, Holstebro and Höglandet
    python bench/rehearsal.py --size holstebro   # or hoglandet, demo

Measures in one run, on one machine: an empty Prefect flow started cold (the yardstick), then per size
a cold `bigbang run` (Prefect's embedded server, warm server off) and a warm one (the warm local
server that `bigbang run` keeps, see bigbang/warm.py), and at the end the marginal cost per step
(warm Holstebro/Höglandet minus warm demo, divided by the extra steps) and the realistic-duration
Holstebro rehearsal at `--compression max` against its zero-duration time. A cold run starts with an
empty inventory cache, a warm one finds what the cold run left there (a second rehearsal of the same
files); per size, the CPU seconds of loading the inventory from its files and from the cache. Prints one
JSON line per measurement: wall_s (the whole process), steps, peak_rss_mb (the CLI process plus its
children).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["BIGBANG_INVENTORY_CACHE"] = "0"  # the bench's own loads (step counts) fill no cache

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


def inventory_for(name: str, workdir: Path) -> Path:
    if name == "demo":
        return ROOT / "inventories" / "demo"
    inventory_dir = workdir / name
    if not inventory_dir.exists():
        write(generate(PRESETS[name], seed=1), inventory_dir)
    return inventory_dir


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str, str, int]:
    """(wall seconds, peak tree RSS in KB, stdout, stderr, exit code) of one whole process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    return wall, peak[0], out, err, proc.returncode


def empty_flow(workdir: Path) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(workdir / "prefect-empty"), PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90")
    env.pop("PREFECT_API_URL", None)
    code = "from prefect import flow\n@flow\ndef empty():\n    return 1\nempty()\n"
    wall, peak, _, err, rc = timed([sys.executable, "-c", code], env, workdir)
    if rc != 0:
        raise SystemExit(f"empty flow failed\n{err}")
    return {"what": "empty Prefect flow, cold", "wall_s": round(wall, 2), "peak_rss_mb": round(peak / 1024, 1)}


def run_size(name: str, workdir: Path, prefect_home: Path, *, warm: bool, extra: tuple[str, ...] = ()) -> dict:
    inventory_dir = inventory_for(name, workdir)
    plan = build_plan(load_inventory(inventory_dir))
    steps = plan.step_count
    device_steps = sum(1 for s in plan.steps() if s.kind.startswith(("ws.", "tc.")))
    # The inventory cache (bigbang/inventory/cache.py) is empty for a cold run and holds what that cold run
    # wrote for the warm ones: a second rehearsal of the same files.
    cache = workdir / f"inventory-cache-{name}"
    if not warm:
        shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), BIGBANG_HOME=str(workdir / f"state-{name}"),
               BIGBANG_REPORTS=str(workdir / "reports"), PREFECT_HOME=str(prefect_home),
               BIGBANG_WARM_SERVER="1" if warm else "0", BIGBANG_CACHE=str(cache), BIGBANG_INVENTORY_CACHE="1")
    env.pop("PREFECT_API_URL", None)
    fresh_db = not (prefect_home / "prefect.db").exists()
    cmd = [sys.executable, "-m", "bigbang", "run", str(inventory_dir), "--quiet", "--failure-rate", "0",
           *(extra or ("--zero-duration",))]
    wall, peak, out, err, rc = timed(cmd, env, workdir)
    # A run that had to migrate a new Prefect database starts making bigbang's migrated template in the
    # background (bigbang/prefect_db.py): let it finish before the next measurement shares the cores.
    os.environ["BIGBANG_CACHE"] = str(cache)
    from bigbang import prefect_db

    prefect_db.wait_until_made(timeout=300)
    if rc not in (0, 1):  # 1: the run ended with a failed device (the demo fails one on purpose)
        raise SystemExit(f"{name}: bigbang run failed ({rc})\n{out}\n{err}")
    used_warm = "(warm)" in err
    return {"size": name, "start": "warm" if used_warm else "cold", "wall_s": round(wall, 2),
            "device_steps": device_steps, "steps": steps, "peak_rss_mb": round(peak / 1024, 1),
            "locations": len(plan.locations), "servers": len(plan.servers),
            "prefect_db": "fresh" if fresh_db else "existing", "options": " ".join(extra) or "--zero-duration"}


def inventory_load(name: str, workdir: Path) -> dict:
    """CPU seconds of `load_inventory` from the files and from the inventory cache, in this process."""
    from bigbang.inventory import cache

    inventory_dir = inventory_for(name, workdir)
    os.environ["BIGBANG_CACHE"] = str(workdir / "inventory-cache-bench")
    os.environ[cache.CACHE_ENV] = "0"
    started = time.process_time()
    load_inventory(inventory_dir)
    from_files = time.process_time() - started
    os.environ[cache.CACHE_ENV] = "1"
    load_inventory(inventory_dir)  # writes the entry
    load_inventory(inventory_dir)  # the first read of an entry imports what a language check needs, once
    started = time.process_time()
    load_inventory(inventory_dir)
    cached = time.process_time() - started
    os.environ[cache.CACHE_ENV] = "0"
    return {"size": name, "inventory_load_cpu_s": round(from_files, 2), "inventory_load_cached_cpu_s": round(cached, 2)}


def start_warm(workdir: Path, prefect_home: Path) -> None:
    """One run with the warm server on starts it; wait until it answers."""
    sys.path.insert(0, str(ROOT))
    os.environ["PREFECT_HOME"] = str(prefect_home)
    from bigbang import warm

    os.environ["BIGBANG_WARM_SERVER"] = "1"
    os.environ.pop("PREFECT_API_URL", None)
    if warm.use() is None:
        warm.start_in_background()
        deadline = time.monotonic() + 180
        while warm.use() is None and time.monotonic() < deadline:
            time.sleep(1)
    os.environ.pop("PREFECT_API_URL", None)


def stop_warm(prefect_home: Path) -> None:
    os.environ["PREFECT_HOME"] = str(prefect_home)
    from bigbang import warm

    warm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("demo", "holstebro", "hoglandet"), action="append")
    parser.add_argument("--workdir", help="keep inventories and ledgers here (default: a temp dir)")
    parser.add_argument("--inventory-only", action="store_true", help="only the inventory load figures")
    args = parser.parse_args()
    sizes = args.size or ["demo", "holstebro", "hoglandet"]
    if "demo" not in sizes:
        sizes = ["demo", *sizes]  # the baseline of the marginal cost per step
    with tempfile.TemporaryDirectory(prefix="bigbang-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        prefect_home = workdir / "prefect-home"
        if args.inventory_only:
            for name in sizes:
                print(json.dumps(inventory_load(name, workdir)), flush=True)
            return
        empty = empty_flow(workdir)
        print(json.dumps(empty), flush=True)
        for name in sizes:
            print(json.dumps(inventory_load(name, workdir)), flush=True)
        results: dict[tuple[str, str], dict] = {}
        for name in sizes:
            results[(name, "cold")] = run_size(name, workdir, prefect_home, warm=False)
            print(json.dumps({**results[(name, "cold")], "ratio_to_empty_flow": round(
                results[(name, "cold")]["wall_s"] / empty["wall_s"], 2)}), flush=True)
        start_warm(workdir, prefect_home)
        try:
            for name in sizes:
                results[(name, "warm")] = run_size(name, workdir, prefect_home, warm=True)
                print(json.dumps({**results[(name, "warm")], "ratio_to_empty_flow": round(
                    results[(name, "warm")]["wall_s"] / empty["wall_s"], 2)}), flush=True)
            base = results[("demo", "warm")]
            for name in sizes:
                if name == "demo":
                    continue
                r = results[(name, "warm")]
                marginal = 1000 * (r["wall_s"] - base["wall_s"]) / (r["steps"] - base["steps"])
                print(json.dumps({"size": name, "marginal_ms_per_step": round(marginal, 3)}), flush=True)
            if "holstebro" in sizes:
                realistic = run_size("holstebro", workdir, prefect_home, warm=True, extra=("--compression", "max"))
                zero = results[("holstebro", "warm")]
                print(json.dumps({**realistic, "ratio_to_zero_duration": round(realistic["wall_s"] / zero["wall_s"], 2)}),
                      flush=True)
        finally:
            stop_warm(prefect_home)


if __name__ == "__main__":
    main()
