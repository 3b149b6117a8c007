"""Gantt charts (SVG, PNG) and the HTML page of a schedule, plus per-crew itineraries.

One layout function produces drawing primitives; the SVG and the PNG (Pillow)
writers draw the same primitives, so both show the same chart.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bigbang.schedule.core import Schedule
from bigbang.schedule.problem import intersect
from bigbang.schedule.solve import UNSCHEDULED

COLOURS = {"normal": "#4c78a8", "high": "#f58518", "critical": "#e45756"}
LATE = "#9d755d"
ROW, LABEL, PAD, AXIS = 22, 150, 8, 34


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: str
    title: str = ""
    opacity: float = 1.0


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str
    width: float = 1.0
    dash: bool = False


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    text: str
    size: int = 11
    fill: str = "#222"
    anchor: str = "start"  # start | middle | end
    bold: bool = False


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    items: tuple[Rect | Line | Text, ...]


def _hhmm(schedule: Schedule, minute: int) -> str:
    return f"{schedule.problem.local(minute):%a %H:%M}"


def layout(schedule: Schedule, team: str | None = None, width: int = 1400) -> Chart:
    """Rows are crews (whole weekend) or, for one team, that team's locations with their access hours."""
    p, sol = schedule.problem, schedule.solution
    end = max(p.window, sol.makespan) + 60
    plot = width - LABEL - 2 * PAD
    scale = plot / end

    def x(minute: float) -> float:
        return LABEL + PAD + minute * scale

    items: list[Rect | Line | Text] = []
    if team is None:
        rows = [(c, crew.id, [j for j in sol.sequences[c]]) for c, crew in enumerate(p.crews)]
        title = f"{p.rollout}: {len(p.jobs)} locations, {len(p.crews)} crews"
    else:
        visits = sorted((v for v in sol.visits if v.crew != UNSCHEDULED and p.crews[v.crew].team == team),
                        key=lambda v: (v.start, v.job))
        rows = [(v.crew, p.jobs[v.job].id, [v.job]) for v in visits]
        title = f"{team}: {len(rows)} locations"
    top = AXIS + 24 + ROW  # the first row is the server phase
    height = top + ROW * len(rows) + 28
    items.append(Text(PAD, 16, title, 13, bold=True))
    items.append(Text(width - PAD, 16, f"makespan {_hhmm(schedule, sol.makespan)} · lower bound "
                      f"{_hhmm(schedule, schedule.lower_bound.minutes)} · "
                      + ("fits" if schedule.verdict.fits else "does not fit"), 11, anchor="end"))

    # days: local midnights and noon ticks
    start_local = p.local(0)
    first_midnight = (start_local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = first_midnight - timedelta(days=1)
    while True:
        for hour in (0, 6, 12, 18):
            t = day.replace(hour=hour)
            minute = round((t - start_local).total_seconds() / 60)
            if 0 <= minute <= end:
                items.append(Line(x(minute), AXIS, x(minute), height - 24, "#bbb" if hour == 0 else "#e4e4e4",
                                  1.0 if hour == 0 else 0.6))
                label = f"{t:%a %d}" if hour == 0 else f"{hour:02d}"
                items.append(Text(x(minute) + 2, AXIS - 4, label, 10 if hour else 11, "#555", bold=hour == 0))
        day += timedelta(days=1)
        if (day - start_local).total_seconds() / 60 > end:
            break

    # server phase
    y = AXIS + 24
    items.append(Text(PAD, y + 15, "servers", 11, "#555"))
    prev = 0
    items.append(Rect(x(0), y + 4, (p.servers.prechecks_done or 1) * scale, ROW - 8, "#bab0ac",
                      f"prechecks until {_hhmm(schedule, p.servers.prechecks_done)}"))
    prev = p.servers.prechecks_done
    for i, (names, done) in enumerate(p.servers.waves):
        items.append(Rect(x(prev), y + 4, max(1.0, (done - prev) * scale), ROW - 8,
                          "#79706e" if i % 2 else "#a39c9a",
                          f"wave {i + 1}: {len(names)} servers, done {_hhmm(schedule, done)}"))
        prev = done

    for r, (c, label, jobs) in enumerate(rows):
        y = top + r * ROW
        crew = p.crews[c]
        if r % 2:
            items.append(Rect(LABEL, y, width - LABEL, ROW, "#f6f6f6"))
        items.append(Text(PAD, y + 15, label if team is None else f"{label} ({crew.id})", 11))
        if team is not None:  # the location's access hours x the crew's shifts, as the schedule sees them
            job = p.jobs[jobs[0]]
            for lo, hi in intersect(job.access, crew.availability):
                if lo >= end:
                    break
                items.append(Rect(x(lo), y + 2, (min(hi, end) - lo) * scale, ROW - 4, "#c7e9c0", "open", 0.8))
        for j in jobs:
            v, job = sol.visits[j], p.jobs[j]
            if v.travel:
                items.append(Rect(x(v.start - v.travel), y + ROW / 2 - 1, v.travel * scale, 2, "#888",
                                  f"travel {v.travel} min"))
            fill = LATE if v.end > p.window else COLOURS.get(job.criticality, COLOURS["normal"])
            tip = (f"{job.id} {job.name}: {_hhmm(schedule, v.start)}–{_hhmm(schedule, v.end)}, "
                   f"{job.devices} devices, {crew.id}")
            items.append(Rect(x(v.start), y + 4, max(1.0, (v.end - v.start) * scale), ROW - 8, fill, tip))
            if (v.end - v.start) * scale > 7 * len(job.id):
                items.append(Text(x(v.start) + 3, y + 15, job.id, 10, "#fff"))
    # the window's end
    items.append(Line(x(p.window), AXIS, x(p.window), height - 24, "#d62728", 2.0, True))
    items.append(Text(x(p.window) - 3, height - 10, f"window closes {_hhmm(schedule, p.window)}", 11, "#d62728",
                      anchor="end"))
    legend = [("normal", COLOURS["normal"]), ("high", COLOURS["high"]), ("critical", COLOURS["critical"]),
              ("after the window", LATE)]
    lx = PAD
    for name, colour in legend:
        items.append(Rect(lx, height - 19, 10, 10, colour))
        items.append(Text(lx + 14, height - 10, name, 10, "#555"))
        lx += 20 + 7 * len(name)
    return Chart(width, height, tuple(items))


# ---------------------------------------------------------------- writers

def to_svg(chart: Chart) -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" height="{chart.height}" '
           f'viewBox="0 0 {chart.width} {chart.height}" font-family="DejaVu Sans, Arial, sans-serif">',
           f'<rect width="{chart.width}" height="{chart.height}" fill="#fff"/>']
    for item in chart.items:
        if isinstance(item, Rect):
            tip = f"<title>{html.escape(item.title)}</title>" if item.title else ""
            opacity = f' fill-opacity="{item.opacity}"' if item.opacity < 1 else ""
            out.append(f'<rect x="{item.x:.1f}" y="{item.y:.1f}" width="{item.w:.1f}" height="{item.h:.1f}" '
                       f'fill="{item.fill}"{opacity}>{tip}</rect>')
        elif isinstance(item, Line):
            dash = ' stroke-dasharray="6 4"' if item.dash else ""
            out.append(f'<line x1="{item.x1:.1f}" y1="{item.y1:.1f}" x2="{item.x2:.1f}" y2="{item.y2:.1f}" '
                       f'stroke="{item.stroke}" stroke-width="{item.width}"{dash}/>')
        else:
            weight = ' font-weight="bold"' if item.bold else ""
            out.append(f'<text x="{item.x:.1f}" y="{item.y:.1f}" font-size="{item.size}" fill="{item.fill}" '
                       f'text-anchor="{item.anchor}"{weight}>{html.escape(item.text)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    for name in (("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"),
                 "/usr/share/fonts/truetype/dejavu/" + ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def to_png(chart: Chart, path: Path) -> Path:
    from PIL import Image, ImageColor, ImageDraw

    image = Image.new("RGB", (chart.width, chart.height), "white")
    draw = ImageDraw.Draw(image, "RGBA")
    fonts: dict[tuple[int, bool], Any] = {}
    for item in chart.items:
        if isinstance(item, Rect):
            r, g, b = ImageColor.getrgb(item.fill)[:3]
            draw.rectangle([item.x, item.y, item.x + max(item.w, 1) - 1, item.y + item.h - 1],
                           fill=(r, g, b, int(255 * item.opacity)))
        elif isinstance(item, Line):
            if item.dash:
                y, step = item.y1, 10
                while y < item.y2:
                    draw.line([item.x1, y, item.x2, min(y + 6, item.y2)], fill=item.stroke, width=int(item.width))
                    y += step
            else:
                draw.line([item.x1, item.y1, item.x2, item.y2], fill=item.stroke, width=max(1, int(item.width)))
        else:
            font = fonts.setdefault((item.size, item.bold), _font(item.size, item.bold))
            anchor = {"start": "ls", "middle": "ms", "end": "rs"}[item.anchor]
            draw.text((item.x, item.y), item.text, fill=item.fill, font=font, anchor=anchor)
    image.save(path, "PNG", optimize=True)
    return path


# ---------------------------------------------------------------- itineraries and files

def itineraries(schedule: Schedule) -> list[dict[str, Any]]:
    """Per crew: where to be when, in order."""
    p, sol = schedule.problem, schedule.solution
    out = []
    for c, seq in enumerate(sol.sequences):
        crew = p.crews[c]
        stops: list[dict[str, Any]] = []
        for j in seq:
            v, job = sol.visits[j], p.jobs[j]
            stops.append({"location": job.site, "visit": job.visit, "visits": job.visits,
                          "name": job.name + (f" (visit {job.visit} of {job.visits})" if job.visits > 1 else ""),
                          "address": job.address,
                          "arrive": _hhmm(schedule, v.start), "leave": _hhmm(schedule, v.end),
                          "start_min": v.start, "end_min": v.end, "travel_min": v.travel,
                          "devices": job.devices, "workstations": job.workstations,
                          "thin_clients": job.thin_clients, "access_hours": job.access_text,
                          "criticality": job.criticality, "late": v.end > p.window,
                          "break_before_min": v.pause, "breaks_inside": _inside(p, v),
                          "breaks": _breaks_text(p, v)})
        out.append({"crew": crew.id, "team": crew.team, "stops": stops,
                    "technicians": list(crew.people or p.technicians.get(crew.team, ())),
                    "busy_min": sum(s["end_min"] - s["start_min"] for s in stops),
                    "travel_min": sum(s["travel_min"] for s in stops)})
    return out


def _inside(p, v) -> int:
    from bigbang.schedule.problem import breaks_inside

    return breaks_inside(v.end - v.start, p.break_after, p.break_length)


def _breaks_text(p, v) -> str:
    """The breaks of one stop (schedule.breaks), in words: before setting out, and on site."""
    parts = []
    if v.pause:
        parts.append(f"{v.pause} min break first")
    inside = _inside(p, v)
    if inside:
        parts.append(f"{inside} × {p.break_length} min break on site")
    return ", ".join(parts)


def write_files(schedule: Schedule, out: Path) -> dict[str, Path]:
    """schedule.json, schedule.html, gantt.svg/png and gantt-<team>.svg/png into `out`."""
    import json

    from bigbang.report import jinja_env

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    data = schedule.to_dict()
    files["json"] = out / "schedule.json"
    files["json"].write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    whole = layout(schedule)
    files["svg"] = out / "gantt.svg"
    files["svg"].write_text(to_svg(whole), encoding="utf-8")
    files["png"] = to_png(whole, out / "gantt.png")
    teams = []
    for team in sorted({crew.team for crew in schedule.problem.crews}):
        chart = layout(schedule, team)
        svg = to_svg(chart)
        (out / f"gantt-{team}.svg").write_text(svg, encoding="utf-8")
        to_png(chart, out / f"gantt-{team}.png")
        teams.append({"id": team, "svg": svg,
                      "crews": [i for i in itineraries(schedule) if i["team"] == team]})
    html_text = jinja_env().get_template("schedule.html.j2").render(
        s=data, gantt=to_svg(whole), teams=teams, hm=_hm)
    files["html"] = out / "schedule.html"
    files["html"].write_text(html_text, encoding="utf-8")
    return files


def _hm(minutes: float) -> str:
    minutes = int(round(minutes))
    sign = "-" if minutes < 0 else ""
    minutes = abs(minutes)
    return f"{sign}{minutes // 60}h{minutes % 60:02d}"
