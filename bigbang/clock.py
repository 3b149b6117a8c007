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


def _outside_parallel(me: int) -> threading.Thread:
    raise RuntimeError(f"participant {me} handed the turn outside parallel()")  # a bug, never a user's


class SimulatedClock:
    """A unit's virtual clock; see the module docstring."""

    def __init__(self, start: float, pace: Pace, timeline: Timeline | None = None, unit: str = ""):
        self._now = start
        self._pace = pace
        self._timeline = timeline
        self._unit = unit
        self._mutex = threading.RLock()
        self._cv = threading.Condition(self._mutex)
        self._lanes: list[threading.Condition] = []  # one per participant, on the same lock: a hand-over wakes one
        self._queue: list[tuple[float, int, int]] = []  # (wake-up, order, participant)
        self._order = itertools.count()
        self._turn: int | None = None  # the participant that may run; None: the unit's own thread
        self._participants = 0
        self._threads: dict[int, threading.Thread] = {}  # the participants started, by lane
        self._start: Callable[[int], threading.Thread] = _outside_parallel
        _bind(self)
        self._advance_timeline(start)

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.sleep_until(self._now + max(0.0, seconds))

    def sleep_until(self, moment: float) -> None:
        if moment <= self._now:  # no time passes: the turn stays (a hand-over here would only cost a thread switch)
            return
        me = getattr(_current, "participant", None)
        with self._cv:
            if me is None or self._participants == 0:  # the unit's own thread, alone
                self._move_to(moment)
                return
            wake = max(moment, self._now)
            if not self._queue or self._queue[0][0] > wake:  # the next to run anyway: keep the turn
                self._move_to(wake)
                return
            heapq.heappush(self._queue, (wake, next(self._order), me))
            self._hand_over()
            lane = self._lanes[me]
            while self._turn != me:
                lane.wait()

    def parallel(self, items: Sequence[T], work: Callable[[T], R], width: int, name: str) -> list[R]:
        if not items:
            return []
        todo = iter(enumerate(items))
        results: dict[int, R] = {}
        errors: list[BaseException] = []
        count = max(1, min(width, len(items)))
        finished = threading.Event()

        def participant(me: int) -> None:
            _bind(self)
            _current.participant = me
            with self._cv:
                while self._turn != me:
                    self._lanes[me].wait()
            try:
                for index, item in todo:  # only the participant holding the turn pulls the next item
                    try:
                        results[index] = work(item)
                    except BaseException as exc:  # noqa: BLE001 - handed to the unit's thread below
                        errors.append(exc)
            finally:
                with self._cv:
                    self._participants -= 1 + self._drop_unstarted()  # no items left for those
                    if self._participants == 0:
                        self._turn = None
                        finished.set()
                    else:
                        self._hand_over()

        with self._cv:
            self._participants = count
            self._lanes = [threading.Condition(self._mutex) for _ in range(count)]
            # The first participant's thread starts at once, the others' only once the unit's time passes:
            # a unit whose work lets no time pass is done by the first alone, without starting the others.
            self._threads = {}
            self._start = lambda me: threading.Thread(target=participant, args=(me,), name=f"{name}-{me}",
                                                      daemon=True)
            for me in range(count):  # everyone starts now, in lane order
                heapq.heappush(self._queue, (self._now, next(self._order), me))
            self._hand_over()
        finished.wait()
        for thread in list(self._threads.values()):
            thread.join()
        if errors:
            raise errors[0]
        return [results[i] for i in range(len(items))]

    def _drop_unstarted(self) -> int:
        """Take the participants that never got the turn out of the queue (lock held); how many."""
        kept = [entry for entry in self._queue if entry[2] in self._threads]
        dropped = len(self._queue) - len(kept)
        if dropped:
            heapq.heapify(kept)
            self._queue = kept
        return dropped

    def close(self) -> None:
        if self._timeline is not None:
            self._timeline.done(self._unit)

    def _hand_over(self) -> None:
        """Give the turn to the earliest waiting participant, moving time to its wake-up (lock held)."""
        if not self._queue:
            return
        moment, _, who = heapq.heappop(self._queue)
        self._move_to(moment)
        self._turn = who
        if who in self._threads:
            self._lanes[who].notify()
        elif not self._threads:  # the first start
            self._start_participants([who])
        else:  # the first time this unit's time passes: from then on its participants take turns
            self._start_participants([m for _, _, m in self._queue if m not in self._threads] + [who])

    def _start_participants(self, lanes: list[int]) -> None:
        """Start these participants' threads, in one go; each waits for its turn on its lane (lock held)."""
        for me in lanes:
            self._threads[me] = thread = self._start(me)
            thread.start()

    def _move_to(self, moment: float) -> None:
        """Time goes on to `moment`, paced (lock held)."""
        if moment <= self._now:
            return
        self._cv.release()  # pacing must not hold up the other threads' bookkeeping
        try:
            self._pace.wait_for(moment)
        finally:
            self._cv.acquire()
        self._now = moment
        self._advance_timeline(moment)

    def _advance_timeline(self, moment: float) -> None:
        if self._timeline is not None:
            self._timeline.advance(self._unit, moment)
