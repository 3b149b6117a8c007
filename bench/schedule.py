"""Benchmark: schedule the generated Holstebro and Höglandet inventories, and play risk trials.

One JSON line per inventory: solve time (first answer and total), makespan, the proven lower
bound, their ratio, the verdict, split locations, the risk trials (time, probability of fitting,
P50/P90) and whether each target of issue 18 is met:

- Holstebro within 1.01 of the bound in <= 30 s; 200 risk trials of Holstebro in <= 30 s;
- Höglandet fits, within 1.03 of its bound, in <= 60 s.

    python bench/schedule.py [--seed 1] [--time-limit 10] [--trials 200] [--preset holstebro --preset hoglandet]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bigbang.inventory import load_inventory  # noqa: E402
from bigbang.inventory.generate import PRESETS, generate, write  # noqa: E402
from bigbang.schedule import make_schedule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated inventory and the solver")
    parser.add_argument("--time-limit", type=float, default=10.0, help="CP-SAT effort (deterministic seconds)")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help="default: holstebro, hoglandet")
    parser.add_argument("--trials", type=int, default=200, help="risk trials per inventory (0: none)")
    args = parser.parse_args()
    for preset in args.preset or ["holstebro", "hoglandet"]:
        with tempfile.TemporaryDirectory() as tmp:
            write(generate(PRESETS[preset], seed=args.seed), Path(tmp) / preset)
            inventory = load_inventory(Path(tmp) / preset)
            t0 = time.perf_counter()
            schedule = make_schedule(inventory, seed=args.seed, time_limit=args.time_limit)
            total = time.perf_counter() - t0
            risk, risk_s = None, 0.0
            if args.trials:
                from bigbang.schedule.risk import simulate

                t0 = time.perf_counter()
                risk = simulate(schedule, inventory, args.trials, seed=args.seed)
                risk_s = time.perf_counter() - t0
        data = schedule.to_dict()
        no_travel = _without_travel(schedule.problem, args.seed)
        targets = TARGETS.get(preset, {})
        row = {
            "bench": "schedule", "preset": preset, "seed": args.seed, "locations": len(schedule.problem.sites),
            "visits": len(schedule.problem.jobs), "split_locations": [x["location"] for x in data["splits"]],
            "crews": len(schedule.problem.crews), "time_limit_s": args.time_limit,
            "solve_s": round(total, 2), "heuristic_s": data["solve"]["heuristic_s"],
            "heuristic_makespan_min": data["solve"]["heuristic_makespan_min"],
            # ruin and recreate after the heuristic (not run when the heuristic already meets the bound)
            "ruin_recreate_s": data["solve"].get("ruin_recreate_s"),
            "ruin_recreate_makespan_min": data["solve"].get("ruin_recreate_makespan_min"),
            "makespan_min": schedule.makespan, "lower_bound_min": schedule.lower_bound.minutes,
            "lower_bound": schedule.lower_bound.name, "ratio": round(schedule.ratio, 4),
            "bounds": {b.name: b.minutes for b in schedule.bounds},
            "unscheduled": len(data["unscheduled"]), "fits": schedule.verdict.fits,
            "slack_min": schedule.verdict.slack, "method": data["solve"]["method"],
            "solver": data["solve"].get("solver_status"), "verdict": schedule.verdict.summary,
            # where the gap comes from: the same inventory with no travel at all, and its own bound
            "no_travel_makespan_min": no_travel[0], "no_travel_lower_bound_min": no_travel[1],
            "no_travel_ratio": round(no_travel[0] / no_travel[1], 4) if no_travel[1] else None,
        }
        if risk is not None:
            row.update(risk_trials=risk.trials, risk_s=round(risk_s, 2), risk_p_fit=round(risk.p_fit, 3),
                       risk_p50=risk.p50_local, risk_p90=risk.p90_local, risk_last=risk.last_locations[:3],
                       risk_resources=risk.resources[:3])
        met = {}
        if "ratio" in targets:
            met[f"ratio<={targets['ratio']:.2f}"] = schedule.ratio <= targets["ratio"]
        if "solve_s" in targets:
            met[f"solve<={targets['solve_s']}s"] = total <= targets["solve_s"]
        if targets.get("fits"):
            met["fits"] = schedule.verdict.fits
        if "risk_s" in targets and risk is not None:
            met[f"{risk.trials} trials<={targets['risk_s']}s"] = risk_s <= targets["risk_s"]
        row["targets"] = met
        print(json.dumps(row, ensure_ascii=False), flush=True)


TARGETS: dict[str, dict] = {
    "holstebro": {"ratio": 1.01, "solve_s": 30, "risk_s": 30},
    "hoglandet": {"ratio": 1.03, "solve_s": 60, "fits": True},
}


def _without_travel(problem, seed: int) -> tuple[int, int]:
    """(makespan by the heuristic, best lower bound) of the same problem with every travel time 0."""
    from dataclasses import replace

    from bigbang.schedule.bounds import capacity, critical_path, energy
    from bigbang.schedule.solve import heuristic

    n = len(problem.jobs)
    free = replace(problem, travel=[[0] * n for _ in range(n)], base_travel=[[0] * n for _ in problem.crews])
    bound = max(critical_path(free)[0].minutes, capacity(free).minutes)
    bound = max(bound, energy(free, bound).minutes)
    return heuristic(free, seed).makespan, bound


if __name__ == "__main__":
    main()
