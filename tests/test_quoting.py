"""PowerShell and shell quoting hold for every string: typographic quotes, line separators, anything.

Property-based (Hypothesis): each quoted value reads back as exactly itself — for PowerShell by a
pure-Python reading of its single-quoted string rule, for sh with shlex.split and by running `sh -c`.
Values rendered unquoted (the thin-client profile) can never add a line.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bigbang.connectors._commands import CommandTemplates, ps_quote, sh_quote
from bigbang.errors import ConnectorError

# PowerShell's tokenizer (CharExtensions.IsSingleQuote): a single-quoted string opens and ends at any of these,
# and two of them in a row inside it stand for the second one.
PS_SINGLE = "'\u2018\u2019\u201a\u201b"
QUOTES = PS_SINGLE + "\"`\u201c\u201d\u201e\u201f\u2032\u2033\u2039\u203a\u00ab\u00bb\uff07\uff02"
LINE_SEPARATORS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
SHELL_SPECIAL = "$;&|(){}[]<>@#*?!~^%\\ \t=,+-"
SPECIAL = QUOTES + LINE_SEPARATORS + SHELL_SPECIAL

special = st.sampled_from(list(SPECIAL))
values = st.text(alphabet=st.one_of(special, special, st.characters(exclude_categories=("Cs",), exclude_characters="\0")),
                 max_size=60)


def ps_read_single_quoted(source: str, start: int = 0) -> tuple[str, int]:
    """The value of the single-quoted string literal at `start` and where it ends, as PowerShell reads it."""
    if source[start] not in PS_SINGLE:
        raise ValueError("not a single-quoted string")
    out, i = [], start + 1
    while True:
        if i >= len(source):
            raise ValueError("unterminated string")
        c = source[i]
        i += 1
        if c in PS_SINGLE:
            if i < len(source) and source[i] in PS_SINGLE:
                out.append(source[i])
                i += 1
                continue
            return "".join(out), i
        out.append(c)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(values)
@example("x\u2019; Remove-Item -Recurse C:\\ ; \u2018")
@example("'\u2018\u2019\u201a\u201b")
def test_a_powershell_literal_reads_back_as_the_value(value):
    quoted = ps_quote(value)
    read, end = ps_read_single_quoted(quoted)
    assert read == value
    assert end == len(quoted)  # nothing of the value is left outside the literal


def test_doubling_only_the_ascii_quote_is_not_enough():
    """The rule above catches the old escaping (this is what a CSV serial could exploit)."""
    value = "x\u2019; Start-Process calc; \u2018"
    naive = "'" + value.replace("'", "''") + "'"
    read, end = ps_read_single_quoted(naive)
    assert read != value and end < len(naive)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values)
@example("a\u2019 -description evil\u2018")
def test_a_value_in_a_rendered_prestage_script_stays_one_argument(value):
    script = CommandTemplates().render("ws_prestage.ps1.j2", {
        "vars": {}, "mac": "aa:bb:cc:dd:ee:ff", "hostname": "ws-1", "target_image": "W11", "domain": "",
        "serial": value, "target": "ws-1"})
    start = script.index("-serialNumber ") + len("-serialNumber ")
    read, end = ps_read_single_quoted(script, start)
    assert read == value
    assert script[end:].startswith(" -description 'ws-1' -settings $settings")


@settings(max_examples=500)
@given(values)
@example("it's \u2018quoted\u2019\nand $(rm -rf /)")
def test_a_shell_word_splits_back_as_the_value(value):
    assert shlex.split(sh_quote(value)) == [value]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(values, min_size=1, max_size=8))
def test_sh_prints_every_quoted_value_unchanged(items):
    script = "printf '%s\\0' " + " ".join(sh_quote(v) for v in items)
    done = subprocess.run(["sh", "-c", script], capture_output=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("utf-8", errors="surrogateescape").split("\0")[:-1] == items


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(hostname=values, firmware=values)
def test_the_rendered_write_profile_script_writes_exactly_the_values(tmp_path_factory, hostname, firmware):
    root = tmp_path_factory.mktemp("device")
    script = CommandTemplates().render("tc_write_profile.sh.j2", {
        "profile_b64": "cHJvZmlsZQ==", "hostname": hostname, "firmware": firmware})
    done = subprocess.run(["sh", "-c", script], env={"DEVICE_ROOT": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert (root / "etc/hostname").read_bytes().decode() == hostname + "\n"
    if firmware:
        assert (root / "var/lib/thinclient/firmware.target").read_bytes().decode() == firmware + "\n"
    assert (root / "etc/thinclient/profile.conf").read_bytes() == b"profile"


PROFILE = {"target_profile": "tc-2026", "location": "HST-001", "location_name": "Rådhuset", "hostname": "tc-1",
           "storefront_url": "https://sf.example/", "firmware": "11.09", "settings": {"keyboard": "da"}}


@pytest.mark.parametrize("field", ["target_profile", "location", "location_name", "hostname", "storefront_url",
                                   "firmware"])
@pytest.mark.parametrize("separator", list(LINE_SEPARATORS) + ["\x00", "\x1b", "\x7f"])
def test_a_line_break_in_a_profile_value_is_refused(field, separator):
    with pytest.raises(ConnectorError, match="line break or control character"):
        CommandTemplates().render("tc_profile.conf.j2", {**PROFILE, field: f"evil{separator}[settings]"})


@pytest.mark.parametrize("where", ["key", "value"])
def test_a_line_break_in_a_profile_setting_is_refused(where):
    setting = {"a\nstorefront_url = x": "1"} if where == "key" else {"a": "1\u2028storefront_url = x"}
    with pytest.raises(ConnectorError, match="line break"):
        CommandTemplates().render("tc_profile.conf.j2", {**PROFILE, "settings": setting})


@settings(max_examples=300)
@given(values.filter(lambda v: not any(c in LINE_SEPARATORS or ord(c) < 32 or ord(c) == 127 for c in v)))
def test_a_profile_keeps_its_lines_whatever_the_values(value):
    rendered = CommandTemplates().render("tc_profile.conf.j2", {**PROFILE, "location_name": value,
                                                                 "settings": {"keyboard": value}})
    baseline = CommandTemplates().render("tc_profile.conf.j2", PROFILE)
    assert len(rendered.splitlines()) == len(baseline.splitlines())
    assert f"location_name = {value}" in rendered.splitlines()


def test_a_nul_is_refused_by_both_quotings():
    for quote in (ps_quote, sh_quote):
        with pytest.raises(ConnectorError, match="NUL"):
            quote("a\0b")


def test_a_custom_template_cannot_skip_the_line_check(tmp_path: Path):
    (tmp_path / "tc_profile.conf.j2").write_text("name = {{ target_profile }}\nraw = {{ location | upper }}\n")
    templates = CommandTemplates(str(tmp_path))
    with pytest.raises(ConnectorError):
        templates.render("tc_profile.conf.j2", {**PROFILE, "location": "x\ny = 1"})
    assert templates.render("tc_profile.conf.j2", PROFILE) == "name = tc-2026\nraw = HST-001\n"
