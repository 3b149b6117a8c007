"""The run's clock: every wait of a run goes through it, and every recorded time comes from it.

Times are seconds on the run's timeline, counted from its origin (when the run's work began).

- `WallClock` (live): the timeline is real time; waits are real sleeps; parallel work runs on threads.
- `SimulatedClock` (rehearsal): a discrete-event view of the weekend. Time is virtual and advances only
  when every participant of a unit (the devices of a location, the servers of a wave) is waiting; the
  participants then run one at a time, earliest wake-up first, ties in a fixed order; a wait that lets no
  time pass keeps the turn. A step therefore
  starts when its slot, its dependencies and its crew allow and ends after its simulated duration,
  whatever the machine is doing. Compression only paces playback (`None`: as fast as the machine
  allows); the timeline is the same at any compression.

Units of one process also agree on causality across locations: before a location reads state that
others write (a rollout halt), it waits until every other unit of the run has reached its start time
(`Timeline.wait_for`), so two rehearsals with the same inputs decide the same way.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")
R = TypeVar("R")

INFINITY = float("inf")


class Clock(Protocol):
    """What the runner and the connectors wait on."""

    def now(self) -> float:
        """Seconds since the run's origin."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def sleep_until(self, moment: float) -> None: ...

    def parallel(self, items: Sequence[T], work: Callable[[T], R], width: int, name: str) -> list[R]:
        """`work` over `items`, at most `width` at once; results in the order of `items`."""
        ...

    def close(self) -> None:
        """This unit's work is over (other units stop waiting for it)."""
        ...


_current = threading.local()


def current_clock() -> Clock:
    """The clock of the unit this thread works for (connectors wait on it). Outside a run's units (a
    defect probe reading devices) a thread gets a clock of its own on which waiting takes no time."""
    clock = getattr(_current, "clock", None)
    if clock is None:
        clock = SimulatedClock(0.0, Pace(None, 0.0))
    return clock


def _bind(clock: Clock) -> None:
    _current.clock = clock


# ---------------------------------------------------------------- live


class WallClock:
    def __init__(self, origin: float):
        self.origin = origin
        _bind(self)

    def now(self) -> float:
        return time.time() - self.origin

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def sleep_until(self, moment: float) -> None:
        self.sleep(moment - self.now())

    def parallel(self, items: Sequence[T], work: Callable[[T], R], width: int, name: str) -> list[R]:
        if not items:
            return []

        def bound(item: T) -> R:
            _bind(self)
            return work(item)

        with ThreadPoolExecutor(max_workers=max(1, min(width, len(items))), thread_name_prefix=name) as pool:
            return list(pool.map(bound, items))

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- rehearsal


@dataclass
class Pace:
    """How virtual time maps onto real time for playback: `compression` simulated seconds per real
    second from (`real_origin`, `sim_origin`); None plays as fast as the machine allows."""

    compression: float | None
    real_origin: float
    sim_origin: float = 0.0

    def wait_for(self, moment: float) -> None:
        if not self.compression:
            return
        delay = self.real_origin + (moment - self.sim_origin) / self.compression - time.time()
        if delay > 0:
            time.sleep(delay)


class Timeline:
    """The units (prechecks, server waves, locations) of one run in this process and how far each got.

    A unit not started yet cannot act before its slot nor before its upstream units got to where they
    are, so `wait_for(unit, t)` waits until every other unit is at or past `t`, or done. A unit waiting
    here is at `t` itself, so the unit furthest behind can always go on: no deadlock.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._offset: dict[str, float] = {}
        self._upstream: dict[str, tuple[str, ...]] = {}
        self._at: dict[str, float] = {}  # running: how far; done: where it ended
        self._done: set[str] = set()
        self._waiting: dict[float, int] = {}  # moment -> units waiting in wait_for until all got there
        self._version = 0  # counts changes: the lowest floor is computed once per change
        self._lowest: tuple[int, float] = (-1, -INFINITY)

    def declare(self, unit: str, offset: float, upstream: Iterable[str] = ()) -> None:
        with self._cv:
            self._offset[unit] = offset
            self._upstream[unit] = tuple(upstream)
            self._version += 1

    def advance(self, unit: str, moment: float) -> None:
        with self._cv:
            if moment > self._at.get(unit, -INFINITY):
                before = self._progress(unit)
                self._at[unit] = moment
                self._changed(before)

    def done(self, unit: str) -> None:
        with self._cv:
            if unit not in self._done:
                before = self._floor(unit)
                self._done.add(unit)
                self._changed(before)

    def _changed(self, before: float) -> None:
        """Wake the waiters when this change may have let some go. A unit whose progress was at or past
        every waiting moment holds nobody up, nor do the units after it (their floor is at least its
        progress), so moving it changes nothing for them: most changes wake no one."""
        self._version += 1
        if self._waiting and before < max(self._waiting) and self._lowest_floor() >= min(self._waiting):
            self._cv.notify_all()

    def wait_for(self, unit: str, moment: float, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            self.advance(unit, moment)  # this unit is at `moment` now: the lowest floor below is another's
            self._waiting[moment] = self._waiting.get(moment, 0) + 1
            try:
                while self._lowest_floor() < moment:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return  # never hang a run on a unit that died without saying so
                    self._cv.wait(min(left, 1.0))
            finally:
                self._waiting[moment] -= 1
                if not self._waiting[moment]:
                    del self._waiting[moment]

    def _lowest_floor(self) -> float:
        """How far every unit got (done: no limit), once per change (lock held)."""
        version, lowest = self._lowest
        if version != self._version:
            memo: dict[str, float] = {}
            lowest = min((INFINITY if u in self._done else self._progress(u, memo=memo) for u in self._offset),
                         default=INFINITY)
            self._lowest = (self._version, lowest)
        return lowest

    def _floor(self, unit: str) -> float:
        if unit in self._done:
            return INFINITY
        return self._progress(unit)

    def _progress(self, unit: str, depth: int = 0, memo: dict[str, float] | None = None) -> float:
        if unit in self._at:
            return self._at[unit]
        if memo is not None and unit in memo:
            return memo[unit]
        if depth > 10_000:  # the plan has no cycles; this only guards against a bug
            return INFINITY
        ups = [self._progress(u, depth + 1, memo) for u in self._upstream.get(unit, ()) if u in self._offset]
        value = max([self._offset.get(unit, 0.0), *ups])
        if memo is not None:
            memo[unit] = value
        return value


class SimulatedClock:
    """A unit's virtual clock; see the module docstring.

    Only one participant of a unit ever runs at a time, so participants are greenlets on the unit's own
    thread, not threads: handing the turn over is a switch of a few microseconds, not a thread wake-up
    through the kernel and the GIL (with threads, a realistic-duration Holstebro rehearsal started ~900
    and spent most of its time handing over between them)."""

    def __init__(self, start: float, pace: Pace, timeline: Timeline | None = None, unit: str = ""):
        self._now = start
        self._pace = pace
        self._timeline = timeline
        self._unit = unit
        self._queue: list[tuple[float, int, int]] = []  # (wake-up, order, participant)
        self._order = itertools.count()
        self._lanes: dict[greenlet, int] = {}  # the participants of the parallel() running, and their lane
        self._scheduler: greenlet | None = None  # where a participant that waits hands the turn back to
        _bind(self)
        self._advance_timeline(start)

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.sleep_until(self._now + max(0.0, seconds))

    def sleep_until(self, moment: float) -> None:
        if moment <= self._now:  # no time passes: the turn stays
            return
        me = self._lanes.get(getcurrent()) if self._lanes else None
        if me is None or self._scheduler is None:  # the unit's own work, outside parallel()
            self._move_to(moment)
            return
        if not self._queue or self._queue[0][0] > moment:  # the next to run anyway: keep the turn
            self._move_to(moment)
            return
        heapq.heappush(self._queue, (moment, next(self._order), me))
        self._scheduler.switch()  # back here once this participant is the earliest to wake

    def parallel(self, items: Sequence[T], work: Callable[[T], R], width: int, name: str) -> list[R]:
        if not items:
            return []
        if self._lanes:
            raise RuntimeError(f"{name}: parallel() inside parallel() on one clock")  # a bug, never a user's
        todo = iter(enumerate(items))
        results: dict[int, R] = {}
        errors: list[BaseException] = []
        exhausted = False

        def participant() -> None:
            nonlocal exhausted
            for index, item in todo:  # only the participant holding the turn pulls the next item
                try:
                    results[index] = work(item)
                except (GreenletExit, KeyboardInterrupt, SystemExit):
                    raise  # not the work's failure: parallel() itself ends with it
                except BaseException as exc:  # noqa: BLE001 - raised from parallel() below
                    errors.append(exc)
            exhausted = True

        scheduler = getcurrent()
        lanes = [greenlet(participant, parent=scheduler) for _ in range(max(1, min(width, len(items))))]
        bound = getattr(_current, "clock", None)
        _bind(self)  # what the work asks current_clock() for
        self._lanes = {lane: me for me, lane in enumerate(lanes)}
        self._scheduler = scheduler
        self._queue = [(self._now, next(self._order), me) for me in range(len(lanes))]  # all start now, in order
        try:
            while self._queue:
                moment, _, me = heapq.heappop(self._queue)
                lane = lanes[me]
                if exhausted and not lane:  # never started, and no item is left for it: time stays
                    continue
                self._move_to(moment)
                lane.switch()  # it runs until it waits (queued again) or has no item left
        finally:
            self._lanes, self._scheduler, self._queue = {}, None, []
            _current.clock = bound
        if errors:
            raise errors[0]
        return [results[i] for i in range(len(items))]

    def close(self) -> None:
        if self._timeline is not None:
            self._timeline.done(self._unit)

    def _move_to(self, moment: float) -> None:
        """Time goes on to `moment`, paced."""
        if moment <= self._now:
            return
        self._pace.wait_for(moment)
        self._now = moment
        self._advance_timeline(moment)

    def _advance_timeline(self, moment: float) -> None:
        if self._timeline is not None:
            self._timeline.advance(self._unit, moment)
