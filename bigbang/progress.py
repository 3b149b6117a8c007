"""What an ops lead watches during a run: phase bars, active locations, live counts.

The monitor polls the ledger, not the process that runs the steps, so the same
display works for a run in this process (`bigbang run`) and for one running on
Prefect workers elsewhere (`bigbang watch RUN_ID`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from bigbang.plan import STEP_KINDS, Plan
from bigbang.store.ledger import Ledger


def display_phase(kind: str) -> str:
    """The bar a step counts towards: its plan phase for server steps; every location step under "locations"."""
    phase = STEP_KINDS[kind].phase
    return phase if phase in ("prechecks", "servers") else "locations"

SHOW_LOCATIONS = 8


class Snapshot:
    """Counts from the ledger at one moment, arranged for display."""

    def __init__(self, plan: Plan, progress: dict[tuple[str, str, str], int], locations: dict[str, dict[str, Any]]):
        self.phase_total: Counter[str] = Counter()
        self.phase_done: Counter[str] = Counter()
        self.loc_total: dict[str, int] = {}
        self.loc_done: Counter[str] = Counter()
        self.status: Counter[str] = Counter()
        for srv in plan.servers:
            for step in (*srv.prechecks, *srv.steps):
                self.phase_total[display_phase(step.kind)] += 1
        for loc in plan.locations:
            n = sum(1 for _ in loc.steps())
            self.loc_total[loc.id] = n
            self.phase_total["locations"] += n
        for (scope, kind, status), n in progress.items():
            self.status[status] += n
            if status == "running":
                continue
            phase = display_phase(kind)
            self.phase_done[phase] += n
            if scope != "servers":
                self.loc_done[scope] += n
        self.locations = locations
        self.total = sum(self.phase_total.values())

    @property
    def finished(self) -> int:
        return self.status["succeeded"] + self.status["failed"] + self.status["skipped"]


class RunMonitor:
    def __init__(self, ledger: Ledger, run_id: str, plan: Plan, console: Console | None = None,
                 interval: float = 0.5):
        self.ledger = ledger
        self.run_id = run_id
        self.plan = plan
        self.console = console or Console(stderr=True)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def snapshot(self) -> Snapshot:
        return Snapshot(self.plan, self.ledger.progress(self.run_id), self.ledger.location_results(self.run_id))

    def start(self) -> RunMonitor:
        self._thread = threading.Thread(target=self._loop, name="bigbang-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        if self.console.is_terminal:
            with Live(self._render(self._safe_snapshot()), console=self.console, refresh_per_second=4,
                      transient=False) as live:
                while not self._stop.wait(self.interval):
                    live.update(self._render(self._safe_snapshot()))
                live.update(self._render(self._safe_snapshot()))
        else:  # logs and CI: one line every few seconds
            last = ""
            while not self._stop.wait(max(self.interval, 5.0)):
                line = self._line(self._safe_snapshot())
                if line != last:
                    self.console.print(line, highlight=False)
                    last = line

    def _safe_snapshot(self) -> Snapshot:
        try:
            return self.snapshot()
        except Exception:  # noqa: BLE001 - a busy database must not kill the display
            return Snapshot(self.plan, {}, {})

    def _line(self, snap: Snapshot) -> str:
        elapsed = time.monotonic() - self._started
        return (f"[{elapsed:6.0f}s] {snap.finished}/{snap.total} steps · {snap.status['succeeded']} done · "
                f"{snap.status['failed']} failed · {snap.status['skipped']} skipped · "
                f"{snap.status['running']} running")

    def _render(self, snap: Snapshot) -> Group:
        bars = Progress(TextColumn("{task.description:<28}"), BarColumn(bar_width=36), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), expand=False)
        for phase in ("prechecks", "servers", "locations"):
            bars.add_task(phase, total=snap.phase_total[phase] or 1, completed=snap.phase_done[phase], note="")
        active = [lid for lid, row in snap.locations.items() if row["status"] == "running"]
        for lid in active[:SHOW_LOCATIONS]:
            bars.add_task(f"  {lid}", total=snap.loc_total.get(lid, 1), completed=snap.loc_done[lid],
                          note="running")
        if len(active) > SHOW_LOCATIONS:
            bars.add_task(f"  … {len(active) - SHOW_LOCATIONS} more running", total=1, completed=0, note="")
        by_status = Counter(row["status"] for row in snap.locations.values() if row["status"] != "running")
        counts = Text.assemble(
            ("done ", "bold"), (f"{snap.status['succeeded']}", "green"), "   ",
            ("failed ", "bold"), (f"{snap.status['failed']}", "red"), "   ",
            ("skipped ", "bold"), (f"{snap.status['skipped']}", "yellow"), "   ",
            ("remaining ", "bold"), f"{snap.total - snap.finished}", "   ",
            ("locations ", "bold"),
            ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none finished",
        )
        return Group(Text(f"{self.plan.rollout} · {self.plan.mode} · {self.run_id}", style="bold"), bars, counts)


def summary_table(report: dict[str, Any]) -> Table:
    table = Table(title="Locations", show_lines=False)
    for col in ("location", "name", "status", "devices", "failed", "skipped", "note"):
        table.add_column(col, justify="right" if col in ("devices", "failed", "skipped") else "left")
    style = {"succeeded": "green", "completed_with_failures": "yellow", "halted": "red", "blocked": "red",
             "skipped": "dim", "pending": "dim"}
    for loc in report["locations"]:
        table.add_row(loc["id"], loc["name"], Text(loc["status"], style=style.get(loc["status"], "")),
                      str(loc["devices"]), str(loc["failed"]), str(loc["skipped"]), loc["reason"])
    return table
