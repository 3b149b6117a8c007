"""Command templates shared by the ssh and winrm connectors.

The commands a step runs are Jinja2 templates under `templates/commands/` (see
docs/connectors.md), so an organisation fits its own tooling without code changes:
point a connector's `commands_dir` at a directory holding only the templates it
changes; the rest come from the shipped defaults. Scripts report what they found as
`key=value` lines on stdout, which become the step's facts.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, UndefinedError

from bigbang.errors import ConfigError, ConnectorError

DEFAULT_COMMANDS_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "commands"


# PowerShell opens and ends a single-quoted string at any of these, and reads two in a row as the second one
# (its tokenizer's IsSingleQuote: ' and the typographic U+2018-U+201B), so each is doubled, never only '.
PS_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
# Characters that end a line for some reader of a rendered file: POSIX, Windows, Python's splitlines, Unicode.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


class Quoted(str):
    """The output of a quoting filter (`sh`, `ps`): a complete literal, safe to place anywhere in a command."""


def _text(value: Any, how: str) -> str:
    text = "" if value is None else str(value)
    if "\0" in text:
        raise ConnectorError(f"a value for a {how} command contains a NUL character, which no command can carry",
                             transient=False)
    return text


def ps_quote(value: Any) -> Quoted:
    """A PowerShell single-quoted string literal that reads back as exactly `value`."""
    text = _text(value, "PowerShell")
    return Quoted("'" + "".join(c + c if c in PS_SINGLE_QUOTES else c for c in text) + "'")


def sh_quote(value: Any) -> Quoted:
    """A POSIX shell word that reads back as exactly `value`."""
    return Quoted(shlex.quote(_text(value, "shell")))


def unquoted_line(value: Any) -> Any:
    """Every `{{ value }}` not passed through a quoting filter: refused when it holds a line break or a control
    character, so an inventory value can never add a line to a profile or a command."""
    if isinstance(value, str) and not isinstance(value, Quoted):
        bad = next((c for c in value if c in LINE_BREAKS or (ord(c) < 32 and c != "\t") or ord(c) == 127), None)
        if bad is not None:
            raise ConnectorError(f"the value {value[:40]!r} contains U+{ord(bad):04X} (a line break or control "
                                 "character), which would change the rendered file's lines", transient=False,
                                 hint="fix the value in the inventory, or quote it with | sh or | ps in the template")
    return value


class CommandTemplates:
    def __init__(self, directory: str | None = None):
        dirs = []
        if directory:
            path = Path(directory).expanduser()
            if not path.is_dir():
                raise ConfigError(f"commands_dir {path} is not a directory",
                                  hint="point it at a directory of *.j2 command templates, or remove it")
            dirs.append(str(path))
        dirs.append(str(DEFAULT_COMMANDS_DIR))
        self.env = Environment(loader=ChoiceLoader([FileSystemLoader(d) for d in dirs]), undefined=StrictUndefined,
                               keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
                               finalize=unquoted_line)
        self.env.filters["sh"] = sh_quote
        self.env.filters["ps"] = ps_quote

    def find(self, *names: str) -> str:
        """The first of `names` that exists (a custom directory wins over the defaults)."""
        for name in names:
            try:
                self.env.get_template(name)
                return name
            except TemplateNotFound:
                continue
        raise ConfigError(f"no command template {' or '.join(names)}",
                          hint=f"the defaults are in {DEFAULT_COMMANDS_DIR}")

    def render(self, name: str, variables: dict[str, Any]) -> str:
        try:
            return self.env.get_template(name).render(**variables)
        except UndefinedError as exc:
            raise ConnectorError(f"command template {name}: {exc.message}; docs/connectors.md lists the variables",
                                 transient=False) from None


def parse_facts(stdout: str) -> dict[str, str]:
    """`key=value` lines of a script's output (other lines are ignored)."""
    facts = {}
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and key.replace("_", "").replace(".", "").isalnum():
            facts[key] = value.strip()
    return facts


def tail(text: str, lines: int = 6, chars: int = 800) -> str:
    """The end of some output, short enough for a step's message and facts."""
    kept = "\n".join(text.strip().splitlines()[-lines:])
    return kept[-chars:]


@dataclass(frozen=True)


class CommandResult:
    name: str  # which template
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def facts(self) -> dict[str, str]:
        return parse_facts(self.stdout)

    def summary(self) -> dict[str, Any]:
        return {"command": self.name, "exit_code": self.exit_code, "stdout_tail": tail(self.stdout),
                "stderr_tail": tail(self.stderr), "seconds": round(self.seconds, 3)}

    def failure(self, where: str) -> ConnectorError:
        detail = tail(self.stderr) or tail(self.stdout) or "no output"
        return ConnectorError(f"{self.name} exited {self.exit_code} on {where}: {detail}", transient=False,
                              command=self.summary())


def record_substep(context: Any, step_id: str, message: str) -> None:
    """Note a finished sub-step in the run's events (best effort: the device stays the truth)."""
    ledger = getattr(context, "state", None)
    if ledger is None:
        return
    try:
        ledger.add_event(context.run_id, "substep", step_id, message)
    except Exception:  # noqa: BLE001 - a journal entry must never fail the device's step
        pass


def compare(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human-readable differences, for the step message and defect tracking."""
    return [f"{key}: expected {want!r}, found {found.get(key)!r}"
            for key, want in expected.items() if want not in (None, "") and str(found.get(key)) != str(want)]
