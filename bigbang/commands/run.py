from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from bigbang import prefect_db, warm
from bigbang.errors import LeaseHeld, LedgerError, RunError, UserError
from bigbang.prefect_env import apply_defaults
from bigbang.progress import RunMonitor, summary_table
from bigbang.session import MODES, RunOptions, RunSession
from bigbang.status import Mode, RunStatus
from bigbang.store.ledger import default_ledger_url

# Exit codes of `bigbang run` (README, "Exit codes").
EXIT_OK = 0  # every step succeeded
EXIT_FAILED = 1  # a step, server or device failed, was skipped or not run; a location halted or was blocked
EXIT_USAGE = 2  # usage or inventory error: nothing ran
EXIT_UNREACHABLE = 3  # the engine (Prefect server, ledger database) or a peer could not be reached


def register(sub) -> None:
    p = sub.add_parser("run", help="run the weekend flow (a rehearsal unless --mode live)")
    p.add_argument("path", nargs="?", help="inventory file or directory (optional with --resume)")
    p.add_argument("--mode", choices=MODES, default=Mode.REHEARSAL)
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run after a crash or Ctrl-C (a run id or `latest`); finished steps are kept")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: run failed steps again")
    p.add_argument("--accept-inventory-changes", action="store_true",
                   help="with --resume: the inventory was edited on purpose; record its plan as the run's next version")
    p.add_argument("--seed", type=int, help="rehearsal: random seed (default: rehearsal.seed)")
    p.add_argument("--compression", type=_compression, metavar="N|max",
                   help="rehearsal: simulated seconds per real second, or max (as fast as the machine allows); "
                        "the simulated timeline is the same at any compression")
    p.add_argument("--failure-rate", type=float, help="rehearsal: chance that one attempt fails")
    p.add_argument("--zero-duration", action="store_true", help="rehearsal: steps take no time (benchmarks)")
    p.add_argument("--ledger", metavar="URL", help="ledger database (default: sqlite:///.bigbang/ledger.db)")
    p.add_argument("--dispatch", choices=("local", "deployments", "dask"),
                   help="where locations run: this process (default), Prefect workers via the deployments, "
                        "or a Dask cluster (BIGBANG_DASK_ADDRESS); see docs/distributed.md")
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    p.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)  # kept: failures always exit 1 now
    p.add_argument("--quiet", action="store_true", help="no live display")
    p.set_defaults(func=run)


def _compression(text: str) -> float:
    """`max` (0: no pacing) or simulated seconds per real second."""
    if text.strip().lower() == "max":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number or 'max'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("compression must be above 0 (or 'max')")
    return value


@dataclass
class _Running:
    """What a signal handler needs to stop the run cleanly (filled in as the command gets there)."""

    console: Console
    session: RunSession | None = None
    monitor: Any = None
    weekend: Any = None
    embedded: Any = None  # bigbang.warm.EmbeddedServer, when this command started Prefect's server


def _on_signals(state: _Running) -> dict[int, Any]:
    """Ctrl-C and SIGTERM end the run as `interrupted`, at any moment, once: a second one is ignored.
    The handlers they replace (none off the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        _interrupted(state, signal.Signals(signum).name)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def run(args: argparse.Namespace) -> int:
    state = _Running(Console(stderr=True, highlight=False))
    previous = _on_signals(state)
    try:
        return _run(args, state)
    except LeaseHeld as exc:  # another executor has the run: it is not done by this command
        vars(exc)["exit_code"] = EXIT_FAILED
        raise
    except LedgerError as exc:
        vars(exc)["exit_code"] = EXIT_UNREACHABLE
        raise
    except UserError as exc:  # usage, inventory, configuration, an unknown run: nothing ran
        vars(exc)["exit_code"] = EXIT_USAGE  # read by bigbang.cli.main
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def unreachable(exc: BaseException) -> BaseException | None:
    """The connection error behind `exc` (the Prefect API, the ledger's database), if that is what it is."""
    import httpx
    from sqlalchemy.exc import OperationalError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, httpx.TransportError, OperationalError, TimeoutError)):
            return current
        current = current.__cause__ or current.__context__
    return None


GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the young generation (Python's default: 700)


def _run(args: argparse.Namespace, state: _Running) -> int:
    console = state.console
    # Most of a run's objects die young by reference counting, not by the cyclic collector, whose passes cost
    # a Höglandet rehearsal 1.6 s at the default threshold; what the run keeps to its end (Prefect, the plan,
    # the inventory) is frozen out of the collector's sight once loaded, below.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    apply_defaults()
    local = (args.dispatch or os.environ.get("BIGBANG_DISPATCH") or "local") == "local"
    warm_url = warm.use() if local else None  # a warm local Prefect server from an earlier run, if one is up
    embedded = None
    if warm_url is None and not os.environ.get("PREFECT_API_URL") and local:
        # Prefect's embedded server, booting in its own process from now on; Prefect reads its URL on import
        embedded = state.embedded = warm.EmbeddedServer.start()
        if embedded is not None:
            os.environ["PREFECT_API_URL"] = embedded.url
    weekend = importlib.import_module("flows.weekend")  # imports Prefect: before the live display starts
    state.weekend = weekend
    _quiet_user_errors()
    weekend.preflight(args.ledger or default_ledger_url(), args.dispatch)
    if args.resume:
        changed = [flag for flag, value in (("--seed", args.seed), ("--failure-rate", args.failure_rate),
                                            ("--zero-duration", args.zero_duration or None)) if value is not None]
        if changed:
            raise RunError(f"{', '.join(changed)} cannot change on --resume: the run keeps its options",
                           hint="only --compression and --retry-failed apply to a resumed run")
        from bigbang.run_ids import resolve_run_id
        from bigbang.store.ledger import Ledger as _Ledger

        args.resume = resolve_run_id(_Ledger(args.ledger), args.resume)  # also `latest`
        session = RunSession.resume(args.resume, inventory_path=args.path, ledger_url=args.ledger,
                                    retry_failed=args.retry_failed, compression=args.compression,
                                    accept_inventory_changes=args.accept_inventory_changes)
        console.print(f"Resuming [bold]{session.run_id}[/]: finished steps are kept.")
    else:
        if not args.path:
            raise RunError("give an inventory path, or --resume RUN_ID")
        if args.retry_failed or args.accept_inventory_changes:
            raise RunError("--retry-failed and --accept-inventory-changes go with --resume RUN_ID")
        options = RunOptions(mode=args.mode, seed=args.seed, compression=args.compression,
                             failure_rate=args.failure_rate, zero_duration=args.zero_duration)
        session = RunSession.start(args.path, options, ledger_url=args.ledger, run_id=args.run_id)
    state.session = session
    plan = session.plan
    gc.freeze()  # see the top of _run: nothing loaded so far is garbage before the command ends
    from bigbang.insecure import warning_lines

    for line in warning_lines(session.inventory):
        console.print(line, style="bold yellow", markup=False)
    console.print(f"[bold]{plan.rollout}[/] · {session.mode} · run [bold]{session.run_id}[/] · "
                  f"{plan.step_count} steps in {len(plan.locations)} locations and {len(plan.servers)} servers")
    console.print(f"ledger {session.ledger.safe_url}" + (f" · Prefect {warm_url} (warm)" if warm_url else ""),
                  style="dim")

    started = time.monotonic()
    monitor = None if args.quiet else RunMonitor(session.ledger, session.run_id, plan, console).start()
    state.monitor = monitor
    try:
        if embedded is not None:
            embedded.wait()
        weekend.run_weekend(session, dispatch=args.dispatch)
    except Exception as exc:
        if monitor is not None:
            monitor.stop()
        cause = None if isinstance(exc, UserError) else unreachable(exc)
        try:
            session.ledger.flush(timeout=30)
            session.ledger.set_run_status(session.run_id, RunStatus.FAILED)
        except LedgerError:
            pass  # the ledger itself is what failed: the error below says so
        except Exception:  # noqa: BLE001 - the ledger's database may be what cannot be reached
            cause = cause or exc
        session.close_quietly()
        if isinstance(exc, UserError):
            raise  # one line (bigbang.cli); what was committed before is kept
        if cause is not None:
            console.print(f"error: the run stopped: cannot reach {_engine_name(cause)}: "
                          f"{type(cause).__name__}: {cause}", markup=False, highlight=False)
            console.print(f"Every finished step is recorded. When it answers again continue with:\n"
                          f"  bigbang run --resume {session.run_id}", markup=False)
            return EXIT_UNREACHABLE
        console.print(f"The run stopped on an unexpected error (below). Every finished step is recorded; "
                      f"after fixing the cause continue with: bigbang run --resume {session.run_id}")
        raise
    except KeyboardInterrupt:  # off the main thread, or a signal handler replaced by someone else's
        _interrupted(state, "SIGINT")
    finally:
        if monitor is not None:
            monitor.stop()
    if embedded is not None:
        os.environ.pop("PREFECT_API_URL", None)  # ours, not the user's: the warm server below must not see it
    if warm_url is None and local:
        warm.start_in_background()  # the next run starts warm
    if embedded is not None:
        prefect_db.make_in_background()  # once per machine: the next new Prefect home skips the migrations
    code = _summarise(session, console, time.monotonic() - started, args.strict)
    session.close_quietly()
    return code


class _NoUserErrorTracebacks(logging.Filter):
    """Prefect logs a task's or flow's exception with its traceback. A UserError (a full disk, a lost lease)
    is reported by the CLI in one line instead; bugs keep their tracebacks."""

    seen = False  # once one was dropped, what fails downstream of it ("NotReady") is the same news

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        from_prefect = record.name.startswith("prefect") and record.levelno >= logging.ERROR
        if isinstance(error, UserError) or (from_prefect and any(
                f"{name}(" in record.getMessage() or f"{name}:" in record.getMessage()
                for name in _user_error_names())):
            self.seen = True
            return False
        return not (from_prefect and self.seen and error is None)


def _user_error_names() -> set[str]:
    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def _quiet_user_errors() -> None:
    quiet = _NoUserErrorTracebacks()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                                       if name.startswith("prefect")]
    for logger in loggers:
        for handler in logger.handlers:
            handler.addFilter(quiet)


def _interrupted(state: _Running, why: str) -> None:
    """Record the run as interrupted, say so in one line, stop Prefect's ephemeral server and exit 130."""
    logging.disable(logging.CRITICAL)  # Prefect's workers now fail to reach the server: not the user's news
    threading.excepthook = lambda _args: None
    session = state.session
    if state.monitor is not None:
        try:
            state.monitor.stop()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    recorded = True
    if session is not None:
        try:
            session.ledger.flush(timeout=20)
            session.ledger.set_run_status(session.run_id, RunStatus.INTERRUPTED)
            session.ledger.release_lease(session.run_id)
        except Exception:  # noqa: BLE001 - the ledger keeps what it committed; say how to go on
            recorded = False
    if state.weekend is not None:
        try:
            state.weekend.stop_local_server()
        except Exception:  # noqa: BLE001
            pass
    if state.embedded is not None:
        with contextlib.suppress(Exception):
            state.embedded.process.kill()  # os._exit below skips the atexit stop
    if session is None:
        line = f"Interrupted ({why}) before the run started."
    else:
        kept = "Every finished step is recorded" if recorded else "The ledger keeps what it had committed"
        line = f"Interrupted ({why}). {kept}; continue with: bigbang run --resume {session.run_id}"
    sys.stdout.flush()
    sys.stderr.write(f"\n{line}\n")  # one line, never wrapped
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # device threads still running would otherwise keep the process alive


def _engine_name(cause: BaseException) -> str:
    from sqlalchemy.exc import OperationalError

    if isinstance(cause, OperationalError):
        return "the ledger database"
    return f"the Prefect API ({os.environ['PREFECT_API_URL']})" if os.environ.get("PREFECT_API_URL") else "the engine"


def _names(items: list[str], limit: int = 12) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def failure_lines(data: dict) -> list[str]:
    """What did not succeed, one line per kind: servers, devices, locations, steps never run."""
    lines = []
    servers = [s for s in data["servers"] if s["status"] != "succeeded"]
    if servers:
        lines.append(f"Servers not done ({len(servers)}): " + _names(
            [f"{s['name']} ({s['status']}{': ' + s['message'] if s['message'] else ''})" for s in servers], 6))
    failed_devices = data["failed_devices"]
    if failed_devices:
        lines.append(f"Devices failed ({len(failed_devices)}): {_names(failed_devices)}")
    stopped = [loc for loc in data["locations"] if loc["status"] not in ("succeeded",)]
    if stopped:
        lines.append(f"Locations not done ({len(stopped)}): " + _names(
            [f"{loc['id']} ({loc['status']}{': ' + loc['reason'] if loc['reason'] else ''})" for loc in stopped], 6))
    steps = data["steps"]
    left = {k: steps.get(k, 0) for k in ("skipped", "pending", "running") if steps.get(k, 0)}
    if left:
        lines.append("Steps not done: " + ", ".join(f"{n} {k}" for k, n in left.items()))
    return lines


def exit_code(data: dict) -> int:
    """0 only when the run completed and every planned step succeeded."""
    steps = data["steps"]
    all_done = all(n == 0 for k, n in steps.items() if k != "succeeded")
    if data["run"]["status"] == "completed" and all_done and not data["failures"]:
        return EXIT_OK
    return EXIT_FAILED


def _summarise(session: RunSession, console: Console, wall: float, strict: bool = False) -> int:
    report = session.report()  # the flow's artifacts were made from it: not built again
    data, run_id = report.data, session.run_id
    out = Console(highlight=False)
    out.print(summary_table(data))
    devices = data["devices"]
    servers = [s["status"] for s in data["servers"]]
    out.print(f"Run {run_id} {data['run']['status']} in {wall:.1f} s: "
              f"{servers.count('succeeded')} of {len(servers)} servers done, {servers.count('failed')} failed; "
              f"{devices.get('succeeded', 0)} devices done, {devices.get('failed', 0)} failed, "
              f"{devices.get('skipped', 0)} skipped.", markup=False, soft_wrap=True)
    if data["run"]["halted_reason"]:
        out.print(f"Halted: {data['run']['halted_reason']}", markup=False, soft_wrap=True)
    out.print(f"Report: {report.html} (and summary.md)", markup=False, soft_wrap=True)
    for line in failure_lines(data):
        out.print(line, markup=False, soft_wrap=True)
    code = exit_code(data)
    if code != EXIT_OK:
        retry = data["retry_command"] or f"bigbang run --resume {run_id} --retry-failed"
        out.print(f"To retry what failed: {retry}", markup=False, soft_wrap=True)
    return code
