"""Load an inventory (one file or a directory of files), cascade defaults, validate.

All problems are collected in one pass and raised together as `InventoryError`,
each located as `file:line: yaml.path: message`.

Order of precedence for a device's values (later wins):
    defaults.<kind>  ->  groups.<g>.<kind> (in the location's order)  ->
    location.defaults.<kind>  ->  the device itself
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bigbang.errors import InventoryError, Problem
from bigbang.inventory import cache
from bigbang.inventory.model import (
    CASCADE_KINDS,
    Inventory,
    is_secret_key,
    normalise_mac,
    secret_ref_problem,
)
from bigbang.inventory.source import Origin, OriginMap, PathT, Plain, YamlFile, format_path

_PLAIN_BOOLS = {"true", "True", "TRUE", "false", "False", "FALSE"}

LIST_SECTIONS = ("teams", "servers", "locations")
MAP_SECTIONS = ("rollout", "defaults", "groups", "connectors", "rehearsal", "support", "schedule")
SECTIONS = LIST_SECTIONS + MAP_SECTIONS
DEVICE_LISTS = {"workstations": "workstation", "thin_clients": "thin_client"}
# Identity fields cannot be inherited: two devices sharing one would be a duplicate.
NOT_INHERITABLE = {"hostname", "serial", "mac", "name", "id", "workstations", "thin_clients", "new_hostname"}


def inventory_files(path: Path) -> tuple[list[Path], list[Problem]]:
    """The inventory's files (.yaml/.yml in any case, below hidden names skipped) and what could not be read.

    Symbolic links are followed; a link to nowhere or a loop is a problem, never skipped silently.
    """
    if not path.is_dir():
        return [path], []
    files: list[Path] = []
    problems: list[Problem] = []
    seen: set[tuple[int, int]] = set()

    def walk(directory: Path) -> None:
        try:
            st = directory.stat()
        except OSError as exc:
            problems.append(Problem(_display(directory), 1, "", f"cannot read directory: {exc.strerror or exc}"))
            return
        if (st.st_dev, st.st_ino) in seen:
            problems.append(Problem(_display(directory), 1, "", "a symbolic link loop; this directory is read once"))
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            problems.append(Problem(_display(directory), 1, "", f"cannot read directory: {exc.strerror or exc}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = Path(entry.path)
            yaml_name = child.suffix.lower() in (".yaml", ".yml")
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
            except OSError as exc:  # e.g. a link loop
                if yaml_name or entry.is_symlink():
                    problems.append(Problem(_display(child), 1, "", f"cannot read: {exc.strerror or exc}"))
                continue
            if is_dir:
                walk(child)
            elif yaml_name and is_file:
                files.append(child)
            elif yaml_name or (entry.is_symlink() and not is_file and not is_dir):
                reason = "a symbolic link to nowhere" if entry.is_symlink() else "not a regular file"
                target = f" ({os.readlink(child)})" if entry.is_symlink() else ""
                problems.append(Problem(_display(child), 1, "", f"{reason}{target}; it is not read"))

    walk(path)
    return sorted(files, key=lambda p: p.relative_to(path).as_posix()), problems


def _display(path: Path) -> str:
    """Relative to the working directory when the file is below it, else absolute (links not resolved)."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(absolute)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] in ".[") or prefix == ""


class _Loader:
    def __init__(self, root: Path):
        self.root = root
        self.problems: list[Problem] = []
        self.origins = OriginMap()
        self.data: dict[str, Any] = {"teams": [], "servers": [], "locations": []}
        self.secret_paths: set[PathT] = set()
        self.reported: list[tuple[str, str]] = []  # (file, path) already reported: later checks stay quiet
        self.unread = False  # a file could not be read: what it held is unknown

    # ------------------------------------------------------------ read and merge
    def read(self) -> str:
        try:
            exists = self.root.exists() or self.root.is_symlink()
        except OSError:
            exists = True  # reading it says what is wrong
        if not exists:
            raise InventoryError([Problem(_display(self.root), 1, "", "no such file or directory")])
        files, problems = inventory_files(self.root)
        self.problems.extend(problems)
        if not files:
            raise InventoryError(problems or [Problem(_display(self.root), 1, "", "no .yaml files in this directory")])
        for file in files:
            yf = YamlFile(file, _display(file)).load()
            self.problems.extend(yf.problems)
            self.reported.extend((yf.display, format_path(p)) for p in yf.bad_paths)
            if yf.data is None:
                self.unread = True
                continue
            self._merge_file(yf)
        # the files as read now (the cache's key hashes them the same way: one definition of the digest)
        return (cache.content_digest(self.root, files) or "")[:16]

    def _merge_file(self, yf: YamlFile) -> None:
        if not isinstance(yf.data, dict):
            self.problems.append(Problem(yf.display, 1, "", "the file must be a mapping of sections (rollout, locations, ...)"))
            return
        by_section: dict[Any, list[tuple[PathT, Origin]]] = {}
        for path, org in yf.origins.items():
            if path:
                by_section.setdefault(path[0], []).append((path, org))
        for key, value in yf.data.items():
            origin = yf.origins[(key,)]
            if key not in SECTIONS:
                self.problems.append(Problem(yf.display, origin.line, format_path((key,)), _unknown(key, SECTIONS, "section")))
                continue
            if value is None:  # an empty section
                value = [] if key in LIST_SECTIONS else {}
            if key in LIST_SECTIONS:
                if not isinstance(value, list):
                    self.problems.append(Problem(yf.display, origin.line, key, f"'{key}' must be a list"))
                    continue
                offset = len(self.data[key])
                self.data[key].extend(value)
                for path, org in by_section.get(key, []):
                    if len(path) > 1:
                        self.origins.set((key, offset + path[1]) + path[2:], org)
                self.origins.set((key,), origin)
            else:
                if not isinstance(value, dict):
                    self.problems.append(Problem(yf.display, origin.line, key, f"'{key}' must be a mapping"))
                    continue
                self._deep_merge(self.data.setdefault(key, {}), value, (key,), yf, by_section.get(key, []))

    def _deep_merge(self, into: dict, new: dict, path: PathT, yf: YamlFile,
                    origins: list[tuple[PathT, Origin]]) -> None:
        if self.origins.get(path) is None:
            self.origins.set(path, yf.origins[path])
        taken: list[PathT] = []
        for key, value in new.items():
            sub = path + (key,)
            if key in into:
                if isinstance(into[key], dict) and isinstance(value, dict):
                    self._deep_merge(into[key], value, sub, yf, [(p, o) for p, o in origins if p[: len(sub)] == sub])
                    continue
                first = self.origins.find(sub)[0]
                self.problems.append(
                    Problem(yf.display, yf.origins[sub].line, format_path(sub),
                            f"already set in {first.file}:{first.line}")
                )
                continue
            into[key] = value
            taken.append(sub)
        if taken:
            wanted = set(taken)
            depth = len(path) + 1
            for p, org in origins:
                if p[:depth] in wanted:
                    self.origins.set(p, org)

    # ------------------------------------------------------------ secrets in plain text
    def scan_secrets(self, value: Any, path: PathT) -> None:
        """A key that names a secret (its last word: password, passwd, pwd, secret, token, key, ...) holds
        a reference or nothing; anything else under it is refused, also in a list or a mapping."""
        if isinstance(value, dict):
            for key, sub in value.items():
                if isinstance(key, str) and is_secret_key(key):
                    self._check_secret(sub, path + (key,))
                else:
                    self.scan_secrets(sub, path + (key,))
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                self.scan_secrets(sub, path + (i,))

    def _check_secret(self, value: Any, path: PathT, in_list: bool = False) -> None:
        problem = None
        if value is None or isinstance(value, bool) or (isinstance(value, Plain) and str(value) in _PLAIN_BOOLS):
            return
        if isinstance(value, list) and not in_list:
            for i, sub in enumerate(value):
                self._check_secret(sub, path + (i,), in_list=True)
            return
        if isinstance(value, dict) and value and set(value) <= {"env", "prefect_secret"}:
            problem = secret_ref_problem(value)
        elif isinstance(value, dict) and not value:
            problem = "an empty reference; give {env: VARIABLE} or {prefect_secret: BLOCK_NAME}"
        elif isinstance(value, (dict, list)):
            problem = ("plaintext secret; a secret is only a reference: {env: VARIABLE} or "
                       "{prefect_secret: BLOCK_NAME}")
        elif value != "":
            problem = "plaintext secret; reference it instead: {env: VARIABLE} or {prefect_secret: BLOCK_NAME}"
        if problem:
            self.secret_paths.add(path)
            self.problems.append(self.origins.problem(path, problem))

    # ------------------------------------------------------------ cascade
    def cascade(self) -> None:
        defaults = self.data.get("defaults", {})
        groups = self.data.get("groups", {})
        self._check_partials(defaults, ("defaults",))
        for name, group in groups.items():
            if isinstance(group, dict):
                self._check_partials(group, ("groups", name))
                inner = group.get("location")
                if isinstance(inner, dict) and "groups" in inner:
                    self.problems.append(self.origins.problem(
                        ("groups", name, "location", "groups"),
                        "a group cannot name other groups; list each group on the location "
                        "(or under defaults.location.groups)"))
                    inner.pop("groups")
            else:
                self.problems.append(self.origins.problem(("groups", name), "a group is a mapping of kind -> values"))
        default_location = defaults.get("location") if isinstance(defaults.get("location"), dict) else {}
        default_groups = self._group_chain(default_location.get("groups"), ("defaults", "location", "groups"), groups)
        for i, server in enumerate(self.data["servers"]):
            if isinstance(server, dict):
                self._inherit(server, ("servers", i), [(("defaults", "server"), defaults.get("server"))])
        for i, loc in enumerate(self.data["locations"]):
            if not isinstance(loc, dict):
                continue
            lpath = ("locations", i)
            own = loc.pop("defaults", None) or {}
            if not isinstance(own, dict):
                self.problems.append(self.origins.problem(lpath + ("defaults",), "must be a mapping of kind -> values"))
                own = {}
            self._check_partials(own, lpath + ("defaults",), kinds=("workstation", "thin_client"))
            chain_groups = (self._group_chain(loc["groups"], lpath + ("groups",), groups) if "groups" in loc
                            else default_groups)
            self._inherit(loc, lpath, [(("defaults", "location"), defaults.get("location"))]
                          + [(p + ("location",), g.get("location")) for p, g in chain_groups])
            for list_key, kind in DEVICE_LISTS.items():
                devices = loc.get(list_key)
                if not isinstance(devices, list):
                    continue
                chain = ([(("defaults", kind), defaults.get(kind))]
                         + [(p + (kind,), g.get(kind)) for p, g in chain_groups]
                         + [(lpath + ("defaults", kind), own.get(kind))])
                chain = [(p, v) for p, v in chain if isinstance(v, dict)]
                for j, device in enumerate(devices):
                    if isinstance(device, dict):
                        self._inherit(device, lpath + (list_key, j), chain)

    def _group_chain(self, names: Any, path: PathT, groups: dict) -> list[tuple[PathT, dict]]:
        """The groups `names` lists, in order; an unknown name is a problem at `path`."""
        if names is None:
            return []
        if not isinstance(names, list):
            self.problems.append(self.origins.problem(path, "must be a list of group names"))
            return []
        chain: list[tuple[PathT, dict]] = []
        for j, g in enumerate(names):
            if isinstance(g, str) and isinstance(groups.get(g), dict):
                chain.append((("groups", g), groups[g]))
            else:
                self.problems.append(self.origins.problem(path + (j,), _unknown(g, groups, "group")))
        return chain

    def _check_partials(self, section: Any, path: PathT, kinds: Iterable[str] = tuple(CASCADE_KINDS)) -> None:
        if not isinstance(section, dict):
            return
        kinds = tuple(kinds)
        for kind, values in section.items():
            if kind not in kinds:
                self.problems.append(self.origins.problem(path + (kind,), _unknown(kind, kinds, "kind")))
                continue
            if not isinstance(values, dict):
                self.problems.append(self.origins.problem(path + (kind,), f"'{kind}' must be a mapping of values"))
                continue
            fields = set(CASCADE_KINDS[kind].model_fields) - NOT_INHERITABLE - {"kind"}
            for key in values:
                if key not in fields:
                    msg = (f"'{key}' cannot be inherited; set it on each {kind}" if key in NOT_INHERITABLE
                           else _unknown(key, fields, f"{kind} key"))
                    self.problems.append(self.origins.problem(path + (kind, key), msg))

    def _inherit(self, target: dict, tpath: PathT, chain: list[tuple[PathT, Any]]) -> None:
        """Fill `target` from `chain` (most general first), recording where each value came from."""
        for spath, source in reversed(chain):  # most specific first: first one set wins
            if not isinstance(source, dict):
                continue
            for key, value in source.items():
                if key in NOT_INHERITABLE or key == "kind":
                    continue
                if key not in target:
                    target[key] = _copy(value)
                    self._copy_origins(value, spath + (key,), tpath + (key,))
                elif isinstance(target[key], dict) and isinstance(value, dict):
                    for sub_key, sub_value in value.items():
                        if sub_key not in target[key]:
                            target[key][sub_key] = _copy(sub_value)
                            self._copy_origins(sub_value, spath + (key, sub_key), tpath + (key, sub_key))

    def _copy_origins(self, value: Any, src: PathT, dst: PathT) -> None:
        origin = self.origins.get(src)
        if origin is not None:
            self.origins.set(dst, origin)
        if isinstance(value, dict):
            for k, v in value.items():
                self._copy_origins(v, src + (k,), dst + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self._copy_origins(v, src + (i,), dst + (i,))

    # ------------------------------------------------------------ schema
    def validate_schema(self) -> Inventory | None:
        from bigbang.connectors import CONNECTORS

        raw = {k: v for k, v in self.data.items() if k not in ("defaults", "groups", "connectors")}
        connectors: dict[str, BaseModel] = {}
        for name, settings in (self.data.get("connectors") or {}).items():
            ctype = CONNECTORS.get(name)
            if ctype is None or name == "simulated":
                self.problems.append(self.origins.problem(
                    ("connectors", name),
                    _unknown(name, [n for n in CONNECTORS if n != "simulated"], "connector")
                    + ("; rehearsal settings go under 'rehearsal:'" if name == "simulated" else "")))
                continue
            try:
                connectors[name] = ctype.settings_model.model_validate(settings if settings is not None else {})
            except ValidationError as exc:
                self._pydantic_problems(exc, ("connectors", name), ctype.settings_model)
        if "rollout" not in raw:
            if self.unread:  # it may be in the file that could not be read
                return None
            self.problems.append(Problem(_display(self.root), 1, "rollout", "missing required section 'rollout'"))
            return None
        try:
            inventory = Inventory.model_validate(raw)
        except ValidationError as exc:
            self._pydantic_problems(exc, (), Inventory)
            return None
        return inventory.model_copy(update={"connectors": connectors})

    def _pydantic_problems(self, exc: ValidationError, prefix: PathT, model: type[BaseModel]) -> None:
        root: Any = self.data
        for part in prefix:
            root = root.get(part) if isinstance(root, dict) else None
        for err in exc.errors(include_url=False):
            loc = _data_path(root, err["loc"])
            path = prefix + loc
            if path in self.secret_paths or any(path[: len(p)] == p for p in self.secret_paths):
                continue
            kind = err["type"]
            last = loc[-1] if loc else (err["loc"][-1] if err["loc"] else "")
            if kind == "extra_forbidden" and loc:
                msg = _unknown(last, _known_keys(model, loc[:-1]), "key")
            elif kind == "missing":
                msg = f"missing required key '{last}'"
            else:
                msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            self.problems.append(self.origins.problem(path, msg))

    # ------------------------------------------------------------ cross-references
    def cross_check(self) -> None:
        from bigbang.connectors import CONNECTORS
        from bigbang.plan import STEP_KINDS

        d = self.data
        p = self.problems.append
        prob = self.origins.problem

        def ids(section: str, key: str) -> dict[str, PathT]:
            """Written value (stripped; lower-case for names) -> its entry; duplicates ignore case and spaces."""
            seen: dict[str, PathT] = {}
            folded: dict[str, PathT] = {}
            for i, item in enumerate(d[section]):
                if not isinstance(item, dict) or not _is_text(item.get(key)):
                    continue
                value = str(item[key]).strip()
                value = value.lower() if key in ("name", "hostname") else value
                if value.casefold() in folded:
                    first = self.origins.find(folded[value.casefold()] + (key,))[0]
                    p(prob((section, i, key), f"duplicate {key} '{item[key]}' (also at {first.file}:{first.line})"))
                else:
                    seen[value] = folded[value.casefold()] = (section, i)
            return seen

        teams = ids("teams", "id")
        servers = ids("servers", "name")
        location_ids = ids("locations", "id")

        unique: dict[str, dict[str, PathT]] = {"hostname": {}, "mac": {}, "serial": {}}
        for name, spath in servers.items():
            unique["hostname"][name] = spath
        rollout = _dict(d.get("rollout"))
        images = _dict(rollout.get("images"))
        profiles = _dict(rollout.get("thin_client_profiles"))
        baselines = _dict(rollout.get("baselines"))
        connectors = sorted(CONNECTORS)

        def check_connector(entry: dict, path: PathT) -> None:
            name = entry.get("connector")
            if _is_text(name) and str(name).strip() not in CONNECTORS:
                p(prob(path + ("connector",), _unknown(name, connectors, "connector")))

        for i, srv in enumerate(d["servers"]):
            if isinstance(srv, dict):
                check_connector(srv, ("servers", i))

        for i, loc in enumerate(d["locations"]):
            if not isinstance(loc, dict):
                continue
            lpath = ("locations", i)
            team = loc.get("team")
            if _is_text(team) and str(team).strip() not in teams:
                p(prob(lpath + ("team",), _unknown(team, teams, "team")))
            for j, req in enumerate(_list(loc.get("requires"))):
                if _is_text(req) and str(req).strip().lower() not in servers:
                    p(prob(lpath + ("requires", j), _unknown(req, servers, "server")))
            for list_key in DEVICE_LISTS:
                for j, dev in enumerate(_list(loc.get(list_key))):
                    if not isinstance(dev, dict):
                        continue
                    dpath = lpath + (list_key, j)
                    check_connector(dev, dpath)
                    for key in ("hostname", "mac", "serial"):
                        value = dev.get(key)
                        if not _is_text(value) or not str(value).strip():
                            continue
                        value = str(value).strip()
                        if key == "mac":
                            try:
                                value = normalise_mac(value)
                            except ValueError:
                                continue
                        value = value.casefold()
                        if value in unique[key]:
                            first = self.origins.find(unique[key][value] + (key,))[0]
                            p(prob(dpath + (key,), f"duplicate {key} '{dev[key]}' (also at {first.file}:{first.line})"))
                        else:
                            unique[key][value] = dpath
                    if list_key == "workstations":
                        for key, known, what in (("target_image", images, "image"), ("baseline", baselines, "baseline")):
                            value = dev.get(key)
                            if _is_text(value) and str(value).strip() not in known:
                                p(prob(dpath + (key,), _unknown(value, known, what) + f"; define it under rollout.{what}s"))
                    else:
                        value = dev.get("target_profile")
                        if _is_text(value) and str(value).strip() not in profiles:
                            p(prob(dpath + ("target_profile",), _unknown(value, profiles, "thin-client profile")
                                   + "; define it under rollout.thin_client_profiles"))

        window = _dict(rollout.get("window"))
        start, end = _local_time(window.get("start")), _local_time(window.get("end"))
        if start and end and end <= start:
            p(prob(("rollout", "window", "end"),
                   f"the window ends ({end:%Y-%m-%d %H:%M}) before it starts ({start:%Y-%m-%d %H:%M})"))

        # depends_on: dangling names and cycles
        graph: dict[str, list[str]] = {}
        for i, srv in enumerate(d["servers"]):
            if not isinstance(srv, dict) or not _is_text(srv.get("name")):
                continue
            name = str(srv["name"]).strip().lower()
            graph[name] = []
            for j, dep in enumerate(_list(srv.get("depends_on"))):
                if not _is_text(dep):
                    continue
                dep = str(dep).strip().lower()
                if dep not in servers:
                    p(prob(("servers", i, "depends_on", j), _unknown(dep, servers, "server")))
                elif dep == name:
                    p(prob(("servers", i, "depends_on", j), "a server cannot depend on itself"))
                else:
                    graph[name].append(dep)
        for cycle in _cycles(graph):
            where = servers[cycle[0]]
            p(prob(where + ("depends_on",), "dependency cycle: " + " -> ".join(cycle + [cycle[0]])))

        rehearsal = _dict(d.get("rehearsal"))
        for kind in _dict(rehearsal.get("steps")):
            if kind not in STEP_KINDS:
                p(prob(("rehearsal", "steps", kind), _unknown(kind, STEP_KINDS, "step kind")))
        targets = set(servers) | set(unique["hostname"]) | set(location_ids)
        for j, inj in enumerate(_list(rehearsal.get("inject"))):
            if not isinstance(inj, dict):
                continue
            target = inj.get("target")
            if _is_text(target) and str(target).strip().lower() not in targets and str(target).strip() not in targets:
                p(prob(("rehearsal", "inject", j, "target"), f"unknown target '{target}' (a hostname, server or location id)"))
            if _is_text(inj.get("step")) and str(inj["step"]).strip() not in STEP_KINDS:
                p(prob(("rehearsal", "inject", j, "step"), _unknown(inj["step"], STEP_KINDS, "step kind")))


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Load, cascade and validate; raise `InventoryError` with every problem found.

    Files loaded before without a problem, unchanged, come from the cache (bigbang.inventory.cache)."""
    root = Path(path)
    entry = content = None
    if cache.enabled():
        files, problems = inventory_files(root)
        content = cache.content_digest(root, files) if files and not problems else None
        if content is not None:
            entry = cache.key(root, content)
            cached = cache.get(entry)
            if cached is not None:
                return cached.model_copy(update={"source": str(root), "digest": content[:16]})
    loader = _Loader(root)
    digest = loader.read()
    reading = len(loader.problems)  # problems of reading the files: all kept
    loader.scan_secrets(loader.data, ())
    loader.cascade()
    loader.cross_check()
    inventory = loader.validate_schema()
    if loader.problems or inventory is None:
        # a value already reported while reading (a control character, a limit) is not reported again
        later = [pr for pr in loader.problems[reading:]
                 if not any(pr.file == file and _under(pr.path, path) for file, path in loader.reported)]
        raise InventoryError(loader.problems[:reading] + later
                             or [Problem(_display(Path(path)), 1, "", "empty inventory")])
    if entry is not None and content is not None and content[:16] == digest:  # the same bytes as the key's
        cache.put(entry, inventory)
    return inventory.model_copy(update={"source": str(root), "digest": digest})


# ------------------------------------------------------------ helpers

def _local_time(value: Any) -> datetime | None:
    """A local date and time (no offset: the model reports one), else None."""
    try:
        moment = datetime.fromisoformat(value.strip()) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is None else None


def _is_text(value: Any) -> bool:
    """Text, or a number written where text is expected (`serial: !!int 12`): both compare as text."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _unknown(name: Any, known: Iterable[Any], what: str) -> str:
    known = sorted(str(k) for k in known)
    msg = f"unknown {what} '{name}'"
    close = difflib.get_close_matches(str(name), known, n=1)
    if close:
        return f"{msg}; did you mean '{close[0]}'?"
    if known and len(known) <= 12:
        return f"{msg} (known: {', '.join(known)})"
    return msg


def _data_path(data: Any, loc: tuple) -> PathT:
    """Pydantic's loc without its type tags (e.g. 'function-before[...]', 'SecretRef')."""
    out: list[Any] = []
    current = data
    for i, part in enumerate(loc):
        if isinstance(current, dict) and part in current:
            current = current[part]
            out.append(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
            out.append(part)
        elif i == len(loc) - 1 and isinstance(part, (str, int)) and isinstance(current, dict):
            out.append(part)  # a missing or unknown key
    return tuple(out)


def _known_keys(model: Any, path: PathT) -> list[str]:
    """Field names of the model reached by walking `path` through `model`'s annotations."""
    current: Any = model
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field else None
        else:
            args = typing.get_args(current)
            current = args[-1] if args else None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items() if n != "kind"]
    return []


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
            others = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = models[0] if models else (others[0] if others else None)
        else:
            return tp


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each dependency cycle once, starting at its smallest name."""
    found: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):]
                k = cycle.index(min(cycle))
                found.add(tuple(cycle[k:] + cycle[:k]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return [list(c) for c in sorted(found)]
