"""The daily defect report: HTML with inline SVG charts, and Markdown for the Prefect artifact."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bigbang.defects.triage import PRIORITY_NAMES
from bigbang.inventory.model import Inventory
from bigbang.report import jinja_env, reports_dir
from bigbang.store.defects import OPEN_STATES, DefectQueue


@dataclass(frozen=True)
class DefectReport:
    directory: Path
    html: Path
    markdown: Path
    json: Path
    markdown_text: str


def _bars(items: list[tuple[str, int]], *, width: int = 520, row: int = 22, label_width: int = 170) -> dict[str, Any]:
    """Horizontal bar chart geometry (the template draws it as SVG)."""
    top = max((v for _, v in items), default=0) or 1
    span = width - label_width - 40
    bars = [{"label": label, "value": value, "y": i * row, "w": max(1, round(span * value / top)) if value else 0}
            for i, (label, value) in enumerate(items)]
    return {"width": width, "height": max(row, row * len(items)), "label_width": label_width, "row": row, "bars": bars}


def _columns(items: list[tuple[str, int]], *, height: int = 160, col: int = 34) -> dict[str, Any]:
    """Vertical column chart geometry for a time series."""
    top = max((v for _, v in items), default=0) or 1
    plot = height - 40
    cols = [{"label": label, "value": value, "x": 10 + i * col, "h": round(plot * value / top),
             "y": 20 + plot - round(plot * value / top)} for i, (label, value) in enumerate(items)]
    return {"width": 20 + col * len(items), "height": height, "col": col, "base": 20 + plot, "columns": cols}


def report_data(queue: DefectQueue, inventory: Inventory | None = None, *, now: float | None = None,
                days: int = 14, run_id: str | None = None) -> dict[str, Any]:
    """One run's report (`run_id`; its frozen inventory names locations and the rollout)."""
    now_dt = datetime.fromtimestamp(now, tz=UTC) if now else datetime.now(UTC)
    every = queue.list(run_id=run_id, limit=None)
    open_ = [d for d in every if d["state"] in OPEN_STATES]
    names = {loc.id: loc.name for loc in inventory.locations} if inventory else {}

    per_day = []
    for back in range(days - 1, -1, -1):
        day = (now_dt - timedelta(days=back)).date()
        end = datetime.combine(day, datetime.max.time(), tzinfo=UTC).timestamp()
        end = min(end, now_dt.timestamp())
        count = sum(1 for d in every if d["first_seen"] <= end and (d["resolved_at"] is None or d["resolved_at"] > end)
                    and not (d["state"] in ("resolved", "closed") and d["resolved_at"] is None))
        per_day.append((day.strftime("%m-%d"), count))
    by_location = Counter(d["location_id"] or "servers" for d in open_).most_common(15)
    by_category = Counter(d["category"] for d in open_).most_common(15)
    by_priority = Counter(d["priority"] for d in open_)
    problems = queue.problems(run_id)[:10]
    collections = [c for c in queue.collections(20) if run_id is None or c["run_id"] == run_id][:1]
    mode = next((d["mode"] for d in every if d.get("mode")), "")
    return {
        "generated_at": now_dt.strftime("%Y-%m-%d %H:%M UTC"),
        "rollout": inventory.rollout.name if inventory else "",
        "run_id": run_id or "",
        "priority_names": PRIORITY_NAMES,
        "forecast": None,
        "mode": mode or "",
        "totals": {"open": len(open_), "all": len(every), "states": dict(Counter(d["state"] for d in every))},
        "priorities": [{"level": p, "name": PRIORITY_NAMES[p], "count": by_priority.get(p, 0)} for p in (1, 2, 3, 4)],
        "per_day": per_day,
        "per_day_chart": _columns(per_day),
        "by_location": [{"id": lid, "name": names.get(lid, lid), "count": n} for lid, n in by_location],
        "by_location_chart": _bars([(f"{lid} {names.get(lid, '')}".strip()[:28], n) for lid, n in by_location]),
        "by_category": [{"category": c, "count": n} for c, n in by_category],
        "by_category_chart": _bars(by_category),
        "problems": problems,
        "top_defects": open_[:20],
        "last_collection": collections[0] if collections else None,
    }


def _forecast(queue: DefectQueue, inventory: Inventory, run_id: str, data: dict[str, Any],
              directory: Path) -> Path | None:
    """The hypercare forecast for the report (its table in Markdown, its chart beside the HTML)."""
    from bigbang.defects.forecast import forecast, write_chart
    from bigbang.store.ledger import Ledger

    ledger = Ledger(queue.engine.url.render_as_string(hide_password=False))
    try:
        result = forecast(ledger, queue, run_id, inventory)
    except Exception:  # noqa: BLE001 - the report is still written without its forecast
        return None
    finally:
        ledger.close()
    data["forecast"] = result.to_dict()
    return write_chart(result, directory / "forecast.png")


def render_daily_report(queue: DefectQueue, inventory: Inventory | None = None, out_dir: Path | None = None, *,
                        now: float | None = None, run_id: str | None = None,
                        forecast_chart: Path | None = None) -> DefectReport:
    data = report_data(queue, inventory, now=now, run_id=run_id)
    day = data["generated_at"][:10]
    directory = (out_dir or reports_dir()) / "defects" / (run_id or "all-runs") / day
    directory.mkdir(parents=True, exist_ok=True)
    data["forecast_chart"] = None
    if run_id is not None and inventory is not None and forecast_chart is None:
        made = _forecast(queue, inventory, run_id, data, directory)
        data["forecast_chart"] = made.name if made else None
    elif forecast_chart is not None and forecast_chart.exists():
        import shutil

        shutil.copyfile(forecast_chart, directory / "forecast.png")
        data["forecast_chart"] = "forecast.png"
    directory.mkdir(parents=True, exist_ok=True)
    env = jinja_env()
    markdown = env.get_template("defects/daily.md.j2").render(**data)
    report = DefectReport(directory, directory / "defects.html", directory / "defects.md", directory / "defects.json",
                          markdown)
    report.html.write_text(env.get_template("defects/daily.html.j2").render(**data), encoding="utf-8")
    report.markdown.write_text(markdown, encoding="utf-8")
    report.json.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return report
