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
SHOW_NOT_SUCCEEDED = 20  # rows of the end-of-run table; the rest are in the report

# What an ops lead sees for a location, in the order the live display lists them
STATES = ("running", "waiting for sign-off", "waiting for slot", "blocked", "halted", "skipped", "crashed",
          "done with failures", "done", "not started")
_FINAL = {"succeeded": "done", "completed_with_failures": "done with failures", "halted": "halted",
          "blocked": "blocked", "skipped": "skipped", "crashed": "crashed"}
_STATE_STYLE = {"running": "cyan", "waiting for sign-off": "yellow", "waiting for slot": "dim", "blocked": "red",
                "halted": "red", "crashed": "red", "done with failures": "yellow", "done": "green"}


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


class Snapshot:
    """Counts from the ledger at one moment, arranged for display."""

    def __init__(self, plan: Plan, progress: dict[tuple[str, str, str], int], locations: dict[str, dict[str, Any]]):
        self.phase_total: Counter[str] = Counter()
        self.phase_done: Counter[str] = Counter()
        self.loc_total: dict[str, int] = {}
        self.loc_done: Counter[str] = Counter()
        self.loc_running: Counter[str] = Counter()
        self.loc_device_done: Counter[str] = Counter()
        self.loc_devices_total: dict[str, int] = {}
        self.loc_signoff_done: set[str] = set()
        self.status: Counter[str] = Counter()
        for srv in plan.servers:
            for step in (*srv.prechecks, *srv.steps):
                self.phase_total[display_phase(step.kind)] += 1
        for loc in plan.locations:
            n = sum(1 for _ in loc.steps())
            self.loc_total[loc.id] = n
            self.loc_devices_total[loc.id] = sum(len(d.steps) for d in loc.devices)
            self.phase_total["locations"] += n
        for (scope, kind, status), n in progress.items():
            self.status[status] += n
            if status == "running":
                self.loc_running[scope] += n
                continue
            if scope != "servers" and kind.startswith(("ws.", "tc.")):
                self.loc_device_done[scope] += n
            if kind == "loc.signoff":
                self.loc_signoff_done.add(scope)
            phase = display_phase(kind)
            self.phase_done[phase] += n
            if scope != "servers":
                self.loc_done[scope] += n
        self.locations = locations
        self.total = sum(self.phase_total.values())

    def state(self, location_id: str) -> str:
        """The location's real state: running, waiting for sign-off, waiting for slot, blocked, halted, done, ..."""
        row = self.locations.get(location_id)
        if row is None:
            return "not started"
        if row["status"] in _FINAL:
            return _FINAL[row["status"]]
        if self.loc_running[location_id]:
            return "running"
        devices = self.loc_devices_total.get(location_id, 0)
        if self.loc_device_done[location_id] >= devices and location_id not in self.loc_signoff_done:
            return "waiting for sign-off"
        if self.loc_done[location_id] == 0:
            return "waiting for slot"
        return "running"

    def states(self) -> Counter[str]:
        return Counter(self.state(lid) for lid in self.loc_total)

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
                    self.console.print(line, highlight=False, markup=False, emoji=False, soft_wrap=True)
                    last = line

    def _safe_snapshot(self) -> Snapshot:
        try:
            return self.snapshot()
        except Exception:  # noqa: BLE001 - a busy database must not kill the display
            return Snapshot(self.plan, {}, {})

    def _line(self, snap: Snapshot) -> str:
        elapsed = time.monotonic() - self._started
        states = snap.states()
        return (f"[{elapsed:6.0f}s] {snap.finished}/{snap.total} steps · {snap.status['succeeded']} done · "
                f"{snap.status['failed']} failed · {snap.status['skipped']} skipped · "
                f"{snap.status['running']} running · locations: "
                + ", ".join(f"{states[s]} {s}" for s in STATES if states[s]))

    def _render(self, snap: Snapshot) -> Group:
        bars = Progress(TextColumn("{task.description:<28}"), BarColumn(bar_width=36), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), expand=False)
        for phase in ("prechecks", "servers", "locations"):
            bars.add_task(phase, total=snap.phase_total[phase] or 1, completed=snap.phase_done[phase], note="")
        order = {state: i for i, state in enumerate(STATES)}
        active = sorted((lid for lid, row in snap.locations.items() if row["status"] == "running"),
                        key=lambda lid: (order[snap.state(lid)], lid))
        for lid in active[:SHOW_LOCATIONS]:
            state = snap.state(lid)
            bars.add_task(f"  {lid}", total=snap.loc_total.get(lid, 1), completed=snap.loc_done[lid],
                          note=f"[{_STATE_STYLE.get(state, '')}]{state}[/]" if state in _STATE_STYLE else state)
        if len(active) > SHOW_LOCATIONS:
            bars.add_task(f"  … {len(active) - SHOW_LOCATIONS} more", total=1, completed=0, note="")
        states = snap.states()
        counts = Text.assemble(
            ("done ", "bold"), (f"{snap.status['succeeded']}", "green"), "   ",
            ("failed ", "bold"), (f"{snap.status['failed']}", "red"), "   ",
            ("skipped ", "bold"), (f"{snap.status['skipped']}", "yellow"), "   ",
            ("remaining ", "bold"), f"{snap.total - snap.finished}", " steps\n",
            ("locations ", "bold"),
            ", ".join(f"{states[s]} {s}" for s in STATES if states[s]) or "none",
        )
        return Group(Text(f"{self.plan.rollout} · {self.plan.mode} · {self.run_id}", style="bold"), bars, counts)


def summary_table(report: dict[str, Any]) -> Group:
    """The end of a run: only the locations that did not succeed (at most SHOW_NOT_SUCCEEDED rows; the rest
    are in the report), then the totals per status. An all-green run of 150 locations is a few lines."""
    locations = report["locations"]
    style = {"succeeded": "green", "completed_with_failures": "yellow", "halted": "red", "blocked": "red",
             "skipped": "dim", "pending": "dim", "running": "cyan", "crashed": "red"}
    order = {"halted": 0, "blocked": 1, "crashed": 2, "completed_with_failures": 3, "running": 4, "skipped": 5,
             "pending": 6}
    bad = sorted((loc for loc in locations if loc["status"] != "succeeded"),
                 key=lambda loc: (order.get(loc["status"], 9), loc["id"]))
    parts: list[Any] = []
    if bad:
        table = Table(title=f"{plural(len(bad), 'location')} of {len(locations)} did not succeed",
                      title_justify="left", show_lines=False)
        for col in ("location", "name", "status", "devices", "failed", "skipped", "note"):
            table.add_column(col, justify="right" if col in ("devices", "failed", "skipped") else "left",
                             overflow="fold")
        for loc in bad[:SHOW_NOT_SUCCEEDED]:
            table.add_row(Text(loc["id"]), Text(loc["name"]), Text(loc["status"], style=style.get(loc["status"], "")),
                          str(loc["devices"]), str(loc["failed"]), str(loc["skipped"]), Text(loc["reason"] or ""))
        if len(bad) > SHOW_NOT_SUCCEEDED:
            table.add_row(Text(f"… {len(bad) - SHOW_NOT_SUCCEEDED} more"), "", "", "", "", "",
                          Text("see the report"))
        parts.append(table)
    by_status = Counter(loc["status"] for loc in locations)
    totals = Text.assemble(("Locations: ", "bold"), ", ".join(
        f"{n} {status.replace('_', ' ')}" for status, n in sorted(by_status.items(), key=lambda kv: -kv[1]))
        if locations else "none")
    if not bad and locations:
        totals = Text.assemble(("All ", "bold"), (plural(len(locations), "location"), "bold green"),
                               " succeeded.")
    parts.append(totals)
    return Group(*parts)
