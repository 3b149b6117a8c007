"""Read YAML into plain Python values while remembering where every value came from.

Every error bigbang reports about an inventory names the file, the line and the
YAML path. PyYAML's composer keeps line marks on nodes; we turn nodes into plain
dicts/lists ourselves and keep a side table: path tuple -> Origin.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Origin:
    file: str
    line: int  # 1-based
    path: PathT  # the path inside its own file


def format_path(path: PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
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


class YamlFile:
    """One YAML file converted to plain values, with origins."""

    def __init__(self, file: Path, display: str):
        self.file = file
        self.display = display
        self.problems: list[Problem] = []
        self.data: Any = None
        self.origins: dict[PathT, Origin] = {}

    def load(self) -> YamlFile:
        try:
            text = self.file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            self.problems.append(Problem(self.display, 1, "", f"not UTF-8 text: {exc}"))
            return self
        except OSError as exc:
            self.problems.append(Problem(self.display, 1, "", f"cannot read file: {exc.strerror}"))
            return self
        try:
            nodes = list(yaml.compose_all(text, Loader=_Loader))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            self.problems.append(Problem(self.display, line, "", f"YAML syntax error: {exc.problem or exc}"))
            return self
        nodes = [n for n in nodes if n is not None]
        if not nodes:
            self.data = {}
            return self
        if len(nodes) > 1:
            self.problems.append(
                Problem(self.display, nodes[1].start_mark.line + 1, "", "more than one YAML document in a file")
            )
        self.data = self._convert(nodes[0], ())
        return self

    def _origin(self, node: yaml.Node, path: PathT) -> None:
        self.origins[path] = Origin(self.display, node.start_mark.line + 1, path)

    def _convert(self, node: yaml.Node, path: PathT) -> Any:
        self._origin(node, path)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(
                        Problem(self.display, key_node.start_mark.line + 1, format_path(path),
                                "YAML merge keys (<<) are not supported; use defaults or groups")
                    )
                    continue
                key = self._scalar(key_node)
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    self.problems.append(
                        Problem(self.display, key_node.start_mark.line + 1, format_path(path),
                                f"keys must be text, not {key!r}")
                    )
                    continue
                if key in out:
                    self.problems.append(
                        Problem(self.display, key_node.start_mark.line + 1, format_path(path + (key,)),
                                f"duplicate key '{key}' (first written on line {self.origins[path + (key,)].line})")
                    )
                    continue
                # The key's own line locates both a bad key and its value.
                out[key] = self._convert(value_node, path + (key,))
                self.origins[path + (key,)] = Origin(self.display, key_node.start_mark.line + 1, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalar(node)

    @staticmethod
    def _scalar(node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return repr(node)
        constructor = yaml.SafeLoader.yaml_constructors.get(node.tag)
        if constructor is None or node.tag == "tag:yaml.org,2002:timestamp":
            # Dates and times stay text: the model parses them with the rollout's timezone.
            return node.value
        return constructor(_SCALAR_LOADER, node)


_SCALAR_LOADER = yaml.SafeLoader("")
