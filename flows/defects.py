"""The post-rollout defect flow: collect defects into the support queue, then the daily report.

Deployed in prefect.yaml on an hourly schedule for the week after the weekend
(`support_days` after the run finished it only logs and returns), and run by hand
with `bigbang defects collect`. All the logic is in bigbang.defects; this flow
only sequences it and publishes the report as a Markdown artifact.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bigbang.defects.collect import collect, latest_run
from bigbang.defects.report import render_daily_report
from bigbang.session import RunSession
from bigbang.store.defects import DefectQueue
from bigbang.store.ledger import Ledger
from flows.secrets import register_prefect_secrets


@task(name="collect-defects", persist_result=False)
def collect_task(run_id: str, ledger_url: str | None, probe: bool) -> dict[str, Any]:
    return collect(ledger_url, run_id, with_probe=probe).to_dict()


@task(name="defect-report", persist_result=False)
def report_task(run_id: str, ledger_url: str | None) -> dict[str, str]:
    session = RunSession.attach(run_id, ledger_url)
    report = render_daily_report(DefectQueue(session.ledger.engine), session.inventory, run_id=run_id)
    return {"html": str(report.html), "markdown_file": str(report.markdown), "markdown": report.markdown_text}


def in_support_period(ledger: Ledger, run_id: str, support_days: float) -> bool:
    run = ledger.get_run(run_id)
    ended = run["finished_at"] if run and run["finished_at"] else None
    return ended is None or time.time() - ended <= support_days * 86400


@flow(name="bigbang-defects", persist_result=False, log_prints=False)
def defects(run_id: str | None = None, ledger_url: str | None = None, probe: bool = True,
            support_days: float = 7.0) -> dict[str, Any]:
    register_prefect_secrets()
    logger = get_run_logger()
    ledger = Ledger(ledger_url)
    run_id = run_id or latest_run(ledger)
    if not in_support_period(ledger, run_id, support_days):
        logger.info("run %s ended more than %g days ago: the support week is over, nothing collected",
                    run_id, support_days)
        return {"run_id": run_id, "skipped": "outside the support period"}
    result = collect_task(run_id, ledger.url, probe)
    for error in result["errors"]:
        logger.warning("%s", error)
    report = report_task(run_id, ledger.url)
    create_markdown_artifact(key="bigbang-defects", markdown=report["markdown"],
                             description=f"daily defect report for {run_id}")
    return {"run_id": run_id, "collection": result, "report": report["html"]}
