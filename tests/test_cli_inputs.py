"""Plausible bad input on the command line and in a stored schedule: one clear line, no traceback."""

from __future__ import annotations

import json

from tests.helpers import copy_demo


def test_ports_out_of_range_are_usage_errors(bigbang):
    for args in (("serve", "x", "--port", "99999"), ("server", "--port", "0"), ("serve", "x", "--port", "http")):
        done = bigbang(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "--port" in done.stderr and ("out of range" in done.stderr or "not a port number" in done.stderr)


def test_a_schedule_slot_without_a_field_is_one_line(bigbang, tmp_path):
    inventory = copy_demo(tmp_path)
    made = bigbang("schedule", inventory, "--time-limit", "1", "--json")
    assert made.returncode == 0, made.stderr
    path = inventory / "schedule.json"
    data = json.loads(path.read_text())
    first = sorted(data["slots"])[0]
    del data["slots"][first]["team"]
    path.write_text(json.dumps(data))
    done = bigbang("run", inventory, "--quiet", "--zero-duration")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"slot {first} has no team" in done.stderr
