"""Read YAML into plain Python values while remembering where every value came from.

Every error bigbang reports about an inventory names the file, the line and the
YAML path. We compose values ourselves from libyaml's event stream (never from
PyYAML's constructors) and keep a side table: path tuple -> Origin. Composing from
events is what makes every input safe:

* Values mean what they say. A plain (unquoted) scalar stays its exact text, as a
  `Plain` string; the model decides what it means (a `str` field keeps `012345`,
  `10.10`, `no` and `22:00` as written, an `int` field parses the text). Where the
  model takes any value (`vars`, thin-client `settings`), `core_value` reads the
  text with the YAML 1.2 core schema and refuses text that would change on the way
  (`012345` or `10.10` read as numbers). Null is `~`, `null` or nothing.
* Limits on file size, nesting depth, scalar length, alias uses and the values that
  aliases copy: "billion laughs" and self-referencing aliases are errors, not minutes
  and gigabytes or a RecursionError.
* Nothing a user can type ends in a traceback: invalid UTF-8, control characters and
  syntax errors become problems with a line and the YAML path being read.
"""

from __future__ import annotations

import bisect
import codecs
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bigbang.errors import Problem

try:  # libyaml is ~10x faster on the large generated inventories
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - wheels ship libyaml
    _Loader = yaml.SafeLoader

PathT = tuple[Any, ...]

# ---------------------------------------------------------------- limits
MAX_FILE_BYTES = 32 * 1024 * 1024  # the largest generated inventory file is well under 1 MB
MAX_DEPTH = 32  # nesting of mappings and lists; inventories need about 8
MAX_SCALAR = 10_000  # characters in one value
MAX_KEY = 200  # characters in one key
MAX_ALIASES = 1_000  # alias uses (*name) per file
MAX_ALIAS_VALUES = 100_000  # values copied by aliases per file
MAX_VALUES = 3_000_000  # values per file


class Plain(str):
    """A scalar written without quotes: its exact text. See `core_value` for what it means as "any" value."""

    __slots__ = ()


# ---------------------------------------------------------------- the YAML 1.2 core schema
_NULL = {"", "~", "null", "Null", "NULL"}
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT10 = re.compile(r"[-+]?[0-9]+\Z")
_INT8 = re.compile(r"0o[0-7]+\Z")
_INT16 = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(nan|NaN|NAN)\Z")


class AmbiguousScalar(ValueError):
    """Plain text that YAML would read as something other than what is written."""


def core_value(text: str) -> Any:
    """What a plain scalar means under the YAML 1.2 core schema; ambiguous text is refused.

    Only for values the model takes as "anything"; a field with a type parses the text itself.
    """
    if text in _NULL:
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT10.match(text):
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits.startswith("0"):
            raise AmbiguousScalar(
                f"{text} reads as the number {int(text)} (older YAML: an octal number); "
                f"write \"{text}\" in quotes for text, or {int(text)} for the number")
        return int(text)
    if _INT8.match(text):
        return int(text[2:], 8)
    if _INT16.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        number = float(text)
        mantissa = text.lower().split("e")[0]
        fraction = mantissa.split(".")[1] if "." in mantissa else ""
        lossy = math.isinf(number) or (
            len(mantissa.strip("+-").replace(".", "").lstrip("0")) > 15 and repr(number) != text)
        if (len(fraction) > 1 and fraction.endswith("0")) or lossy:
            raise AmbiguousScalar(
                f"{text} reads as the number {number!r}; write \"{text}\" in quotes for text, "
                f"or {number!r} for the number")
        return number
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


def plain_value(value: Any) -> Any:
    """`value` with every `Plain` scalar in it read by `core_value` (for fields that take any value)."""
    if isinstance(value, Plain):
        return core_value(str(value))
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_value(v) for v in value]
    return value


# ---------------------------------------------------------------- characters
# C0 and C1 controls (but tab and newline), lone surrogates, non-characters, and the
# Unicode line separators that libyaml would fold into line breaks.
_BAD_CHAR = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u2028\u2029]")
_BAD_IN_VALUE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def describe_char(ch: str) -> str:
    names = {"\x00": "NUL", "\x1b": "ESC", "\x7f": "DEL", "\u2028": "line separator", "\u2029": "paragraph separator"}
    name = names.get(ch)
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


def _decode_error_handler(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    return "\ufffd", exc.end


codecs.register_error("bigbang-replace", _decode_error_handler)


def decode_marking(data: bytes, encoding: str = "utf-8") -> tuple[str, dict[int, str]]:
    """Text (invalid bytes as U+FFFD) and {1-based line: what was wrong on it}."""
    bad: dict[int, str] = {}
    try:
        return data.decode(encoding), bad
    except UnicodeDecodeError:
        pass
    pos = 0
    while pos < len(data):
        try:
            data[pos:].decode(encoding)
            break
        except UnicodeDecodeError as exc:
            start = pos + exc.start
            line = data.count(b"\n", 0, start) + 1
            column = start - (data.rfind(b"\n", 0, start) + 1) + 1
            bad.setdefault(line, f"byte 0x{data[start]:02x} at column {column} is not valid {encoding.upper()} text")
            pos = pos + exc.end
    return data.decode(encoding, errors="bigbang-replace"), bad


# ---------------------------------------------------------------- origins

@dataclass(frozen=True)
class Origin:
    file: str
    line: int  # 1-based
    path: PathT  # the path inside its own file


_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_/@+-]*$")


def format_path(path: PathT) -> str:
    """locations[0].workstations[2].mac; a key that is not a simple word is quoted: vars["a.b"]."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            text = str(part)
            if len(text) > 60:
                text = text[:57] + "..."
            quoted = '"' + "".join(
                c if c.isprintable() and c not in '"\\' else ("\\" + c if c in '"\\' else f"\\x{ord(c):02x}"
                                                              if ord(c) < 256 else f"\\u{ord(c):04x}")
                for c in text) + '"'
            out += f"[{quoted}]"
    return out


class OriginMap:
    """Path (in the merged inventory) -> where it was written."""

    def __init__(self) -> None:
        self._origins: dict[PathT, Origin] = {}

    def set(self, path: PathT, origin: Origin) -> None:
        self._origins[path] = origin

    def get(self, path: PathT) -> Origin | None:
        return self._origins.get(tuple(path))

    def find(self, path: PathT, default_file: str = "<inventory>") -> tuple[Origin, PathT]:
        """The origin of `path` or of its nearest located ancestor, and the unlocated rest."""
        path = tuple(path)
        for cut in range(len(path), -1, -1):
            origin = self._origins.get(path[:cut])
            if origin is not None:
                return origin, path[cut:]
        return Origin(default_file, 1, ()), path

    def problem(self, path: PathT, message: str) -> Problem:
        """A Problem located at `path`, named by its path inside the file that wrote it."""
        origin, rest = self.find(path)
        return Problem(origin.file, origin.line, format_path(origin.path + rest), message)


# ---------------------------------------------------------------- composing values from events

class _Abort(Exception):
    """Stop reading this file (a limit was exceeded); the problem is recorded."""


_SKIP = object()  # a value that is read but not kept (a duplicate key, a key that is not text)


class _Frame:
    __slots__ = ("kind", "value", "path", "anchor", "key", "key_line", "line", "flow", "mark", "keep", "as_key")

    def __init__(self, kind: str, path: PathT, anchor: str | None, line: int, flow: bool, mark: int, keep: bool):
        self.kind = kind
        self.value: Any = {} if kind == "map" else []
        self.path = path
        self.anchor = anchor
        self.key: Any = None  # None: the next node is a key
        self.key_line = 0
        self.line = line
        self.flow = flow
        self.mark = mark  # len(YamlFile._order) when the node started: its origins follow
        self.keep = keep
        self.as_key = False  # a collection written where a key belongs: read, then dropped


_STR_TAGS = {None, "!", "tag:yaml.org,2002:str"}
_TYPED_TAGS = {"tag:yaml.org,2002:int": int, "tag:yaml.org,2002:float": float,
               "tag:yaml.org,2002:bool": bool, "tag:yaml.org,2002:null": type(None)}
_MAP_TAGS = {None, "!", "tag:yaml.org,2002:map"}
_SEQ_TAGS = {None, "!", "tag:yaml.org,2002:seq"}


class YamlFile:
    """One YAML file converted to plain values, with origins."""

    def __init__(self, file: Path, display: str):
        self.file = file
        self.display = display
        self.problems: list[Problem] = []
        self.data: Any = None
        self.origins: dict[PathT, Origin] = {}
        self.bad_paths: set[PathT] = set()  # values already reported; later checks stay quiet about them
        self._order: list[PathT] = []
        self._anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, first origin index, end index)
        self._aliases = 0
        self._alias_values = 0
        self._bad_lines: dict[int, str] = {}
        self._events: list[tuple[int, PathT]] = []  # (line, path) of every value and key, in file order

    # ------------------------------------------------------------ entry
    def load(self) -> YamlFile:
        try:
            size = self.file.stat().st_size
            if size > MAX_FILE_BYTES:
                self._problem(1, (), f"the file is {size // (1024 * 1024)} MB; at most {MAX_FILE_BYTES // (1024 * 1024)} MB")
                return self
            raw = self.file.read_bytes()
        except OSError as exc:
            self._problem(1, (), f"cannot read file: {exc.strerror or exc}")
            return self
        text, self._bad_lines = decode_marking(raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        for line_no, line in enumerate(text.split("\n"), 1):
            m = _BAD_CHAR.search(line)
            if m:
                self._bad_lines.setdefault(
                    line_no, f"character {describe_char(m.group())} at column {m.start() + 1} is not allowed")
        if self._bad_lines:
            text = _BAD_CHAR.sub("\ufffd", text)
        try:
            self.data = self._compose(text)
        except _Abort:
            self.data = None
        finally:
            self._report_bad_lines()
        return self

    def _report_bad_lines(self) -> None:
        """Each line with a character we refused, located at the value written on (or before) it."""
        lines = [line for line, _ in self._events]
        for line, message in sorted(self._bad_lines.items()):
            i = bisect.bisect_right(lines, line) - 1
            path = self._events[i][1] if i >= 0 else ()
            if self.data is None and lines and line > lines[-1]:
                path = ()  # after a syntax error: what it belongs to is unknown
            self._problem(line, path, message)
            self.bad_paths.add(path)

    def _problem(self, line: int, path: PathT, message: str) -> None:
        self.problems.append(Problem(self.display, line, format_path(path), message))

    # ------------------------------------------------------------ composer
    def _compose(self, text: str) -> Any:
        stack: list[_Frame] = []
        root: Any = _SKIP
        documents = 0

        def child_path() -> PathT:
            if not stack:
                return ()
            top = stack[-1]
            if top.kind == "seq":
                return top.path + (len(top.value),)
            return top.path + (top.key,) if top.key is not None else top.path

        def place(value: Any, line: int, keep: bool = True) -> None:
            """Put a finished value into its parent (or make it the document)."""
            nonlocal root
            if not stack:
                root = value
                return
            top = stack[-1]
            if top.kind == "seq":
                if keep and top.keep:
                    top.value.append(value)
                return
            if top.key is None:  # `value` is a key
                top.key_line = line
                top.key = value if keep else _SKIP
                return
            if top.key is not _SKIP and keep and top.keep:
                top.value[top.key] = value
            top.key = None

        def key_of(event: Any, line: int, path: PathT) -> Any:
            text = event.value
            if not event.style and text == "<<":
                self._problem(line, path, "YAML merge keys (<<) are not supported; use defaults or groups")
                return _SKIP
            if not event.style and text in _NULL:
                self._problem(line, path, "a key cannot be empty or null")
                return _SKIP
            if len(text) > MAX_KEY:
                self._problem(line, path, f"a key of {len(text)} characters; at most {MAX_KEY}")
                return _SKIP
            top = stack[-1]
            if text in top.value:
                first = self.origins[top.path + (text,)].line
                self._problem(line, top.path + (text,), f"duplicate key '{text}' (first written on line {first})")
                return _SKIP
            return str(text)

        def located(path: PathT, line: int) -> None:
            self.origins[path] = Origin(self.display, line, path)
            self._order.append(path)
            if len(self._order) > MAX_VALUES:
                self._problem(line, path, f"more than {MAX_VALUES:,} values in one file")
                raise _Abort

        events: Any = yaml.parse(text, Loader=_Loader)
        try:
            event: Any
            for event in events:
                if type(event) is yaml.DocumentStartEvent:
                    documents += 1
                    if documents > 1:
                        start: Any = event.start_mark
                        self._problem(start.line + 1, (), "more than one YAML document in a file")
                        break
                    continue
                if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
                    continue
                line = event.start_mark.line + 1
                is_key = bool(stack) and stack[-1].kind == "map" and stack[-1].key is None
                path = child_path()

                if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                    frame = stack.pop()
                    if frame.as_key:
                        stack[-1].key = _SKIP  # its value is read and dropped too
                        continue
                    if frame.anchor is not None:
                        self._anchors[frame.anchor] = (frame.value, frame.mark, len(self._order))
                    place(frame.value, frame.line, keep=frame.keep)
                    continue

                if is_key:
                    if isinstance(event, yaml.ScalarEvent):
                        key_path = stack[-1].path
                        key = key_of(event, line, key_path) if stack[-1].keep else _SKIP
                        self._events.append((line, key_path + (event.value[:MAX_KEY],)))
                        place(key, line)
                        if key is not _SKIP:
                            located(key_path + (key,), line)
                            bad_char = _BAD_IN_VALUE.search(str(key))
                            if bad_char:
                                self._problem(line, key_path + (key,), f"the key contains {describe_char(bad_char.group())}")
                                self.bad_paths.add(key_path + (key,))
                        continue
                    self._problem(line, stack[-1].path, "keys must be text, not a list, a mapping or an alias")
                    self._events.append((line, stack[-1].path))
                    if isinstance(event, yaml.AliasEvent):
                        stack[-1].key = _SKIP
                        continue
                    # read the collection, keep nothing of it
                    if len(stack) >= MAX_DEPTH:
                        self._problem(line, path, f"nested more than {MAX_DEPTH} levels deep")
                        raise _Abort
                    frame = _Frame("map" if isinstance(event, yaml.MappingStartEvent) else "seq", path,
                                   None, line, bool(event.flow_style), len(self._order), keep=False)
                    frame.as_key = True
                    stack.append(frame)
                    continue

                keep = not stack or (stack[-1].keep and (stack[-1].kind == "seq" or stack[-1].key is not _SKIP))
                if keep and (not stack or stack[-1].kind == "seq"):
                    located(path, line)
                self._events.append((line, path))

                if isinstance(event, yaml.AliasEvent):
                    self._alias(event, line, path, keep, place)
                    continue

                if isinstance(event, yaml.ScalarEvent):
                    value = self._scalar(event, line, path) if keep else None
                    if event.anchor is not None:
                        self._anchors[event.anchor] = (value, len(self._order), len(self._order))
                    place(value, line, keep=keep)
                    continue

                # a mapping or a sequence starts
                if len(stack) >= MAX_DEPTH:
                    self._problem(line, path, f"nested more than {MAX_DEPTH} levels deep")
                    raise _Abort
                is_map = isinstance(event, yaml.MappingStartEvent)
                if event.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                    self._problem(line, path, f"unsupported tag {event.tag}")
                    self.bad_paths.add(path)
                if event.anchor is not None:
                    self._anchors.pop(event.anchor, None)  # an alias inside refers to the one above, not this one
                stack.append(_Frame("map" if is_map else "seq", path, event.anchor, line,
                                    bool(event.flow_style), len(self._order), keep))
        except yaml.YAMLError as exc:
            self._syntax_error(exc, stack, stack[-1].path if stack and stack[-1].kind == "seq" else child_path(),
                               len(text.rstrip()))
            raise _Abort from None
        finally:
            events.close()
        if root is _SKIP or root is None:
            return {}
        return root

    def _scalar(self, event: Any, line: int, path: PathT) -> Any:
        text = event.value
        if len(text) > MAX_SCALAR:
            self._problem(line, path, f"the value is {len(text):,} characters; at most {MAX_SCALAR:,}")
            self.bad_paths.add(path)
            return text[:MAX_SCALAR]
        bad = _BAD_IN_VALUE.search(text)
        if bad and path not in self.bad_paths:
            self._problem(line, path, f"the value contains {describe_char(bad.group())}; remove it")
            self.bad_paths.add(path)
        tag = event.tag
        plain = not event.style and tag is None  # libyaml: '' for plain, the Python parser: None
        if plain:
            return None if text in _NULL else Plain(text)
        if tag in _STR_TAGS:
            return text
        wanted = _TYPED_TAGS.get(tag)
        if wanted is None:
            self._problem(line, path, f"unsupported tag {tag}")
            self.bad_paths.add(path)
            return text
        try:
            value = core_value(text)
        except AmbiguousScalar:
            value = text
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not wanted:
            self._problem(line, path, f"{text!r} is not a valid {tag.rsplit(':', 1)[-1]}")
            self.bad_paths.add(path)
            return text
        return value

    def _alias(self, event: Any, line: int, path: PathT, keep: bool, place: Any) -> None:
        name = event.anchor
        entry = self._anchors.get(name)
        if entry is None:
            self._problem(line, path, f"alias *{name} names no anchor above it (an alias cannot refer to a "
                                      "value that contains it)")
            self.bad_paths.add(path)
            place(None, line, keep=False)
            return
        value, first, end = entry
        self._aliases += 1
        size = end - first + 1
        self._alias_values += size
        if self._aliases > MAX_ALIASES:
            self._problem(line, path, f"more than {MAX_ALIASES:,} aliases in one file")
            raise _Abort
        if self._alias_values > MAX_ALIAS_VALUES:
            self._problem(line, path, f"aliases copy more than {MAX_ALIAS_VALUES:,} values in this file")
            raise _Abort
        if keep:
            base = self._order[first - 1] if first > 0 and isinstance(value, (dict, list)) else None
            if base is not None:
                for sub in self._order[first:end]:
                    new = path + sub[len(base):]
                    self.origins[new] = Origin(self.display, self.origins[sub].line, new)
                    self._order.append(new)
            self.origins.setdefault(path, Origin(self.display, line, path))
        place(_copy(value), line, keep=keep)

    def _syntax_error(self, exc: Any, stack: list[_Frame], path: PathT, end: int) -> None:
        if not isinstance(exc, yaml.MarkedYAMLError):
            self._problem(1, path, f"YAML syntax error: {exc}")
            return
        problem = exc.problem or "syntax error"
        context = exc.context or ""
        pmark, cmark = exc.problem_mark, exc.context_mark
        line = pmark.line + 1 if pmark else 1
        message = f"YAML syntax error: {problem}"
        if context.startswith("while scanning") and cmark is not None:
            line = cmark.line + 1
            what = context.removeprefix("while scanning ")
            if "end of stream" in problem:
                message = f"YAML syntax error: {what} is never closed (the file ends on line {pmark.line + 1 if pmark else line})"
            elif pmark is not None and pmark.line + 1 != line:
                message += f" ({context} that starts here, found on line {pmark.line + 1})"
        elif pmark is None or pmark.index >= end or "end of stream" in problem or "<stream end>" in problem:
            flows = [f for f in stack if f.flow]
            if flows:
                frame = flows[-1]
                line, path = frame.line, frame.path
                what = "mapping" if frame.kind == "map" else "list"
                message = f"YAML syntax error: this {what} is never closed with '{'}' if frame.kind == 'map' else ']'}'"
        self._problem(line, path, message)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
