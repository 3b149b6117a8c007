"""The inventory: a small typed model of one Big Bang weekend.

Pydantic models with `extra="forbid"`: an unknown key is an error, never silently
ignored. Values cascade defaults -> groups -> location defaults -> device before
validation (see loader.py), so every device here is complete.
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import UTC, datetime, time
from functools import cached_property
from typing import Annotated, Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from bigbang.inventory.source import plain_value

# ---------------------------------------------------------------- value types

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")
_SECONDS = re.compile(r"^\s*\d+(\.\d+)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from 90, 90.5, "90s", "5m", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like '5m' or '1h30m'")
    if isinstance(value, str) and _SECONDS.match(value):
        value = float(value)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if not math.isfinite(value):
            raise ValueError("a duration must be a finite number of seconds")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and any(m.groups()):
            h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            return h * 3600 + mi * 60 + s
    raise ValueError(f"not a duration: {value!r} (use seconds or text like '45m', '1h30m')")


Duration = Annotated[float, BeforeValidator(parse_duration)]

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.I)


def normalise_mac(value: Any) -> str:
    if not isinstance(value, str) or not _MAC.match(value.strip()):
        raise ValueError(f"not a MAC address: {value!r} (expected like 00:1a:2b:3c:4d:5e)")
    digits = re.sub(r"[^0-9a-fA-F]", "", value).lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


Mac = Annotated[str, BeforeValidator(normalise_mac)]

_HOSTNAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?$", re.I)


def check_hostname(value: Any) -> str:
    value = value.strip() if isinstance(value, str) else value
    if not isinstance(value, str) or not _HOSTNAME.match(value):
        raise ValueError(
            f"not a valid hostname: {value!r} (letters, digits and dashes, at most 63, no dots)"
        )
    return value.lower()


Hostname = Annotated[str, BeforeValidator(check_hostname)]
# A value of any type (vars): unquoted text is read with the YAML 1.2 core schema, ambiguous text refused.
AnyValue = Annotated[Any, BeforeValidator(plain_value)]

_DNS_NAME = re.compile(r"^(?=.{1,253}\.?$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$", re.I)


def check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def check_address(value: str) -> str:
    """An IP address or a DNS name."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if _DNS_NAME.match(value) and not re.fullmatch(r"[0-9.]+", value):
            return value
    raise ValueError(f"not an IP address or DNS name: {value!r}")


def check_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"not a network: {value!r} (expected like 10.31.1.0/24)") from None


def check_netmask(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{value}").netmask) if "." in value else _bad_mask(value)
    except ValueError:
        return _bad_mask(value)


def _bad_mask(value: str) -> str:
    raise ValueError(f"not a netmask: {value!r} (expected like 255.255.255.0)")


def check_ip_or_dhcp(value: str) -> str:
    return "dhcp" if value.lower() == "dhcp" else check_ip(value)


def check_url(value: str) -> str:
    """An http(s) URL with a host and, if given, a port that exists."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"not a URL: {value!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {value!r} (expected like https://host.example/path)")
    return value


IpAddress = Annotated[str, AfterValidator(check_ip)]
NetAddress = Annotated[str, AfterValidator(check_address)]
Url = Annotated[str, AfterValidator(check_url)]


def _coordinates(value: tuple[float, float]) -> tuple[float, float]:
    lat, lon = value
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise ValueError(f"latitude {lat} is not between -90 and 90 (write [latitude, longitude])")
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        raise ValueError(f"longitude {lon} is not between -180 and 180 (write [latitude, longitude])")
    return value


Coordinates = Annotated[tuple[float, float], AfterValidator(_coordinates)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]

# A key names a secret when its last word (split on _ - . space and camelCase) is one of these;
# a plain-text value under such a key is refused. `password_hash`, `key_file`, `bypass` are not secrets.
SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "pass", "passphrase", "passcode", "secret", "token", "key", "apikey",
    "privatekey", "secretkey", "accesskey", "authtoken", "accesstoken", "credential", "creds",
})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def key_words(key: str) -> list[str]:
    """`secretKey` -> [secret, key]; `API_TOKENS` -> [api, tokens]."""
    return [w.lower() for part in re.split(r"[^A-Za-z0-9]+", key) for w in _CAMEL.split(part) if w]


def is_secret_key(key: str) -> bool:
    words = key_words(key)
    if not words:
        return False
    last = words[-1]
    return last in SECRET_WORDS or (last.endswith("s") and last[:-1] in SECRET_WORDS)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,254}$")


def secret_ref_problem(value: dict[str, Any]) -> str | None:
    """What is wrong with a {env: ...} / {prefect_secret: ...} mapping, or None."""
    given = {k: v for k, v in value.items() if v is not None}
    if len(given) != 1:
        return "give exactly one of 'env' or 'prefect_secret'"
    kind, name = next(iter(given.items()))
    if not isinstance(name, str) or not name.strip():
        return f"{{{kind}: ...}} needs a name, e.g. {{env: BIGBANG_PASSWORD}}"
    if kind == "env" and not _ENV_NAME.match(name.strip()):
        return f"not an environment variable name: {name!r} (letters, digits and _, not starting with a digit)"
    if kind == "prefect_secret" and not _BLOCK_NAME.match(name.strip()):
        return f"not a Prefect block name: {name!r} (lower-case letters, digits and dashes)"
    return None


class SecretRef(BaseModel):
    """A reference to a secret, never the secret itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str | None = Field(None, description="name of an environment variable holding the secret")
    prefect_secret: str | None = Field(None, description="name of a Prefect Secret block")

    @model_validator(mode="before")
    @classmethod
    def _no_plaintext(cls, value: Any) -> Any:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            raise ValueError(
                "plaintext secret; reference it instead: {env: VARIABLE} or {prefect_secret: BLOCK_NAME}"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        problem = secret_ref_problem({"env": self.env, "prefect_secret": self.prefect_secret})
        if problem:
            raise ValueError(problem)
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"prefect-secret:{self.prefect_secret}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, coerce_numbers_to_str=True)


# ---------------------------------------------------------------- rollout

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _parse_clock(value: Any) -> time:
    if isinstance(value, str):
        if value.strip() == "24:00":
            return time(23, 59, 59)
        try:
            return time.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"not a time of day: {value!r} (use HH:MM)")


Clock = Annotated[time, BeforeValidator(_parse_clock)]


class AccessWindow(_Model):
    """When technicians can get in: days of the week and a daily time range."""

    days: list[Day] = Field(default_factory=lambda: cast(list[Day], list(DAYS)))
    start: Clock = Field(alias="from")
    end: Clock = Field(alias="to")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _order(self) -> AccessWindow:
        if self.end <= self.start:
            raise ValueError(f"access window ends ({self.end:%H:%M}) before it starts ({self.start:%H:%M})")
        return self


def _access_hours(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("24/7", "always"):
        return []
    return value


AccessHours = Annotated[list[AccessWindow], BeforeValidator(_access_hours)]


def _parse_local(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"not a date and time: {value!r} (use 2026-11-27T18:00)")


LocalDateTime = Annotated[datetime, BeforeValidator(_parse_local)]


class Window(_Model):
    """The rollout weekend, in local time of `timezone`."""

    start: LocalDateTime
    end: LocalDateTime
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: 'Europe' names a directory
            raise ValueError(f"unknown timezone {value!r} (use an IANA name like Europe/Copenhagen)") from None
        return value

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: datetime) -> datetime:
        if value.tzinfo:
            raise ValueError("write the time without an offset; the window's 'timezone' says which")
        return value
    # end > start is checked by the loader, so it is reported even when another field is wrong.

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def start_utc(self) -> datetime:
        # via UTC, so that end - start counts a daylight-saving change inside the window
        return self.start.replace(tzinfo=self.zone).astimezone(UTC)

    @property
    def end_utc(self) -> datetime:
        return self.end.replace(tzinfo=self.zone).astimezone(UTC)


class Image(_Model):
    version: str
    os: Literal["windows", "linux"] = "windows"
    description: str | None = None


class ThinClientProfile(_Model):
    firmware: str | None = None
    storefront_url: Url | None = None
    hostname_pattern: str = "{location}-tc-{index:03d}"
    settings: dict[str, Annotated[str | int | float | bool, BeforeValidator(plain_value)]] = Field(default_factory=dict)


class Baseline(_Model):
    packages: list[str] = Field(default_factory=list)


class HaltRollout(_Model):
    """When the whole rollout stops instead of just one location."""

    failed_locations_percent: float | None = Field(None, ge=0, le=100)
    on_server_failure: bool = False


class FailurePolicy(_Model):
    retries: int = Field(2, ge=0, le=20, description="extra attempts for a failed device step")
    retry_delay: Duration = Field(60.0, description="wait between attempts (simulated time in rehearsals)")
    max_fail_percent: float = Field(
        20.0, ge=0, le=100, description="a location halts when more than this share of its devices failed"
    )
    halt_rollout: HaltRollout = Field(default_factory=lambda: HaltRollout.model_validate({}))


_PASSWORD_HASH = re.compile(r"^(scrypt\$\d+\$\d+\$\d+|pbkdf2_sha256\$\d+)\$[A-Za-z0-9+/=_-]+\$[A-Za-z0-9+/=_-]+$")


def _password_hash(value: Any) -> str:
    if not isinstance(value, str) or not _PASSWORD_HASH.match(value.strip()):
        raise ValueError("not a password hash (never put a password here); make one with `bigbang hash-password`")
    from bigbang.web.passwords import cost_problem

    problem = cost_problem(value.strip())
    if problem:
        raise ValueError(f"{problem}: make a new hash with `bigbang hash-password`")
    return value.strip()


PasswordHash = Annotated[str, BeforeValidator(_password_hash)]


class StaffMember(_Model):
    """An ops lead or support staff member who signs in to the field app (technicians are under teams)."""

    id: Identifier
    name: str
    role: Literal["ops_lead", "support"]
    username: Identifier | None = Field(None, description="sign-in name; defaults to the id")
    password_hash: PasswordHash | None = Field(None, description="from `bigbang hash-password`")
    phone: str | None = None
    email: str | None = None


class Rollout(_Model):
    name: str
    staff: list[StaffMember] = Field(default_factory=list, description="ops leads and support staff (field app)")
    window: Window
    images: dict[str, Image] = Field(default_factory=dict)
    thin_client_profiles: dict[str, ThinClientProfile] = Field(default_factory=dict)
    baselines: dict[str, Baseline] = Field(default_factory=dict)
    failure_policy: FailurePolicy = Field(default_factory=lambda: FailurePolicy.model_validate({}))
    signoff_timeout: Duration = Field(
        12 * 3600.0, description="how long a location waits for its technician's sign-off before it fails"
    )
    field_url: Url | None = Field(
        None, description="the field app's public address (https://field.example.dk): the QR codes of printed "
                          "checklists, per location and per desk (`--url` and $BIGBANG_FIELD_URL win)")
    language: str | None = Field(
        None, description="default language of the field app and checklists (en, da, sv, nb, nn; "
                          "default: from the window's timezone)")

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        from bigbang.checklists import languages  # the catalogues in templates/i18n

        if value is not None and value.lower() not in languages():
            raise ValueError(f"unknown language '{value}' (known: {', '.join(languages())})")
        return value.lower() if value is not None else None


# ---------------------------------------------------------------- devices

class Workstation(_Model):
    hostname: Hostname
    serial: str
    mac: Mac
    model: str
    target_image: str
    current_image: str | None = None
    baseline: str | None = None
    new_hostname: Hostname | None = None
    domain: str | None = None
    address: NetAddress | None = Field(None, description="IP or DNS name to reach it; defaults to the hostname")
    desk: str | None = None
    room: str | None = None
    user: str | None = None
    connector: str = "winrm"
    vars: dict[str, AnyValue] = Field(default_factory=dict)

    kind: Literal["workstation"] = "workstation"


class ThinClient(_Model):
    hostname: Hostname
    mac: Mac
    target_profile: str
    serial: str | None = None
    model: str | None = None
    current_profile: str | None = None
    new_hostname: Hostname | None = None
    address: NetAddress | None = None
    desk: str | None = None
    room: str | None = None
    connector: str = "ssh"
    vars: dict[str, AnyValue] = Field(default_factory=dict)

    kind: Literal["thin_client"] = "thin_client"


Device = Workstation | ThinClient


class Customization(_Model):
    os: Literal["windows", "linux"] = "windows"
    hostname: Hostname | None = None
    domain: str | None = None
    ip: Annotated[str, AfterValidator(check_ip_or_dhcp)] = "dhcp"
    netmask: Annotated[str, AfterValidator(check_netmask)] | None = None
    gateway: IpAddress | None = None
    dns: list[IpAddress] = Field(default_factory=list)
    timezone: str | None = None


class Server(_Model):
    name: Hostname
    template: str
    cluster: str
    datastore: str
    network: str
    cpu: int = Field(2, ge=1, le=768)
    memory_gb: int = Field(4, ge=1, le=24576)
    memory_mb: int | None = Field(None, ge=4, le=24576 * 1024,
                                  description="memory in MB, where it is not whole GB (wins over memory_gb)")
    disks_gb: list[Annotated[int | float, Field(gt=0, le=65536)]] = Field(
        default_factory=list, description="disk sizes in GB; fractions as vCenter reports them (e.g. 0.5)")
    datacenter: str | None = None
    vm_name: str | None = Field(None, description="the VM's name in vCenter where it is not the server's name "
                                                  "(e.g. the same name in two datacenters)")
    resource_pool: str | None = None
    folder: str | None = None
    platform: Literal["vmware", "citrix"] = "vmware"
    role: str | None = None
    existing: bool = Field(False, description="the VM exists and will be changed: snapshot it first")
    customization: Customization | None = None
    depends_on: list[str] = Field(default_factory=list)
    connector: str = "vsphere"
    vars: dict[str, AnyValue] = Field(default_factory=dict)

    kind: Literal["server"] = "server"

    @model_serializer(mode="wrap")
    def _leave_out_unset_vsphere_fields(self, handler: SerializerFunctionWrapHandler,
                                        info: SerializationInfo) -> dict[str, Any]:
        # memory_mb and vm_name are written only when set, so plans and digests of inventories that do not
        # use them stay as they were.
        data = handler(self)
        for key in ("memory_mb", "vm_name"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @property
    def memory_in_mb(self) -> int:
        return self.memory_mb if self.memory_mb is not None else self.memory_gb * 1024

    @model_validator(mode="before")
    @classmethod
    def _citrix_on_xen(cls, value: Any) -> Any:
        # Citrix Hypervisor servers default to the xen connector; a cascaded `connector` still wins.
        if isinstance(value, dict) and value.get("platform") == "citrix" and "connector" not in value:
            return {**value, "connector": "xen"}
        return value


# ---------------------------------------------------------------- locations and teams

class Contact(_Model):
    name: str
    role: str | None = None
    phone: str | None = None
    email: str | None = None


class LocationNetwork(_Model):
    subnet: Annotated[str, AfterValidator(check_network)] | None = None
    broadcast: IpAddress | None = Field(None, description="broadcast address for Wake-on-LAN")
    gateway: IpAddress | None = None


class Location(_Model):
    id: Identifier
    name: str
    address: str
    team: str
    criticality: Literal["normal", "high", "critical"] = "normal"
    access_hours: AccessHours = Field(default_factory=list, description="empty or '24/7' means always")
    coordinates: Coordinates | None = None
    requires: list[str] = Field(default_factory=list, description="servers that must be ready first")
    groups: list[str] = Field(default_factory=list)
    network: LocationNetwork | None = None
    region: Identifier | None = Field(
        None, description="work queue of the Prefect workers that can reach this location's network")
    contacts: list[Contact] = Field(default_factory=list)
    notes: str | None = None
    workstations: list[Workstation] = Field(default_factory=list)
    thin_clients: list[ThinClient] = Field(default_factory=list)

    @property
    def devices(self) -> list[Device]:
        return [*self.workstations, *self.thin_clients]


class Technician(_Model):
    id: Identifier
    name: str
    phone: str | None = None
    email: str | None = None
    username: Identifier | None = Field(None, description="field app sign-in name; defaults to the id")
    password_hash: PasswordHash | None = Field(None, description="from `bigbang hash-password`; no sign-in without it")
    shifts: AccessHours = Field(default_factory=list, description="when this technician works; empty: all weekend")
    skills: list[str] = Field(default_factory=list, description="what this technician can do (schedule.skills)")
    base: tuple[float, float] | None = Field(None, description="home base coordinates (schedule); else the team's")
    max_hours: Duration | None = Field(
        None, description="longest working time of one shift (schedule); longer shifts are cut to it")


class TeamCapacity(_Model):
    parallel_locations: int = Field(1, ge=1, le=100, description="locations the team works at once")
    parallel_devices: int = Field(4, ge=1, le=500, description="devices worked at once in one location")
    devices_per_hour: dict[Literal["workstation", "thin_client"], Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="schedule estimate per device kind; overrides the step durations")


class Team(_Model):
    id: Identifier
    name: str
    lead: str | None = None
    technicians: list[Technician] = Field(default_factory=list)
    capacity: TeamCapacity = Field(default_factory=lambda: TeamCapacity.model_validate({}))
    base: Coordinates | None = Field(None, description="coordinates the team sets out from (schedule)")


class SplitSettings(_Model):
    """How `bigbang schedule` splits a location that cannot be worked in one piece (docs/schedule.md)."""

    allow: bool = Field(True, description="split a location that does not fit one access opening into visits")
    min_visit: Duration = Field(2 * 3600.0, description="no visit is shorter than this")
    max_visits: int = Field(4, ge=1, le=20, description="visits one crew makes to one location at most")
    crews_at_once: int = Field(
        1, ge=1, le=20, description="crews that may work one location at the same time (each its own devices)")
    devices_per_crew: int = Field(
        40, ge=1, description="a location gets several crews at once only with at least this many devices per crew")


class BreakSettings(_Model):
    """Technicians' breaks within a shift (`bigbang schedule`): after at most `after` of work (on site and
    travelling), a break of `length`. Danish practice: a break when the day's work exceeds 6 hours;
    Swedish (arbetstidslagen): no more than 5 hours in a row without one."""

    after: Duration = Field(6 * 3600.0, description="longest stretch of work without a break")
    length: Duration = Field(30 * 60.0, description="how long a break lasts")

    @model_validator(mode="after")
    def _sensible(self) -> BreakSettings:
        if self.after < 3600:
            raise ValueError(f"after: {self.after / 60:g} min of work between breaks is too short (at least 1h)")
        if not 0 < self.length < self.after:
            raise ValueError("length: a break lasts more than 0 and less than `after`")
        return self


class ScheduleSettings(_Model):
    """Inputs of `bigbang schedule` beyond teams and locations (see docs/schedule.md)."""

    travel: dict[str, dict[str, Duration]] = Field(
        default_factory=dict, description="travel times: from location or team id -> to location id -> duration")
    travel_speed_kmh: float = Field(40.0, gt=0, description="estimate from coordinates when not in `travel`")
    road_factor: float = Field(1.3, ge=1, description="road distance per straight-line distance")
    travel_default: Duration = Field(15 * 60.0, description="travel time when neither matrix nor coordinates say")
    setup: Duration = Field(15 * 60.0, description="time on site per location besides device work")
    step_durations: dict[str, Duration] = Field(
        default_factory=dict, description="estimate per step kind; else rehearsal.steps, else defaults")
    keep_teams: bool = Field(False, description="keep each location with its inventory team")
    start: Literal["slot", "checkin", "slot_or_checkin"] = Field(
        "slot", description="a scheduled location starts at its slot, when its technician checks in, or "
                            "whichever comes first (rehearsals: a simulated technician checks in at the slot)")
    split: SplitSettings = Field(default_factory=lambda: SplitSettings.model_validate({}),
                                 description="visits of a location too long for one access opening")
    skills: dict[str, list[str]] = Field(
        default_factory=dict, description="location id -> skills its crew needs (technicians' skills)")
    min_rest: Duration = Field(11 * 3600.0, description="rest a technician has between two shifts at least")
    breaks: BreakSettings | None = Field(
        None, description="breaks within a shift (`breaks: {}`: 30 min after at most 6 h of work); none: not modelled")


# ---------------------------------------------------------------- rehearsal (the simulated connector)

class StepSimulation(_Model):
    duration: Duration = Field(0.0, description="mean simulated duration of one attempt")
    jitter: float = Field(0.2, ge=0, le=1, description="spread of durations as a share of the mean")
    failure_rate: float | None = Field(None, ge=0, le=1, description="chance that one attempt fails")


class Injection(_Model):
    """A failure to inject: `target` is a hostname, server name or location id."""

    target: str
    step: str | None = Field(None, description="step kind, e.g. ws.image; all steps when empty")
    attempts: int | Literal["all"] = "all"
    message: str = "injected failure"


class Rehearsal(_Model):
    """Settings of the simulated connector."""

    seed: int = 0
    compression: float = Field(3600.0, gt=0, description="simulated seconds per real second")
    failure_rate: float = Field(0.0, ge=0, le=1, description="default chance that one attempt fails")
    steps: dict[str, StepSimulation] = Field(
        default_factory=dict, description="per step kind (`tc.reassign`), or per kind and the connector a live run "
                                          "would use (`tc.reassign@ums`), which wins")
    inject: list[Injection] = Field(default_factory=list)
    simulate_signoff: bool = Field(
        True, description="a simulated technician signs each location off; false: wait for a real sign-off")


# ---------------------------------------------------------------- support (post-rollout defects)

class PriorityRule(_Model):
    """How a defect's priority is computed: criticality x affected x age (see docs/defects.md)."""

    criticality: dict[str, float] = Field(
        default_factory=lambda: {"normal": 1.0, "high": 3.0, "critical": 10.0},
        description="weight of a location's criticality (critical: one unusable device there is P1)")
    kinds: dict[str, float] = Field(
        default_factory=lambda: {"unusable": 2.0, "degraded": 1.0, "report": 1.0},
        description="weight of the kind of failure: device unusable (not imaged/reassigned), degraded, a report")
    categories: dict[str, float] = Field(default_factory=dict, description="extra weight per defect category")
    age_step: Duration = Field(24 * 3600.0, description="the age factor grows by 1 per this much age")
    max_age_factor: float = Field(3.0, ge=1, description="the age factor never exceeds this")
    levels: list[float] = Field(
        default_factory=lambda: [20.0, 8.0, 3.0],
        description="scores at or above these give priority 1, 2, 3; anything lower is 4")

    @field_validator("levels")
    @classmethod
    def _descending(cls, value: list[float]) -> list[float]:
        if len(value) != 3 or sorted(value, reverse=True) != value:
            raise ValueError("give three descending scores, the thresholds of priority 1, 2 and 3")
        return value


class TicketSystemSettings(_Model):
    """Where defects are filed: the embedded queue, or Request Tracker 5 over REST2."""

    kind: Literal["embedded", "rt"] = "embedded"
    url: Url | None = Field(None, description="RT's base URL, e.g. https://rt.example.org")
    queue: str = "General"
    user: str | None = None
    password: SecretRef | None = None
    key_field: str = Field("BigBang Defect", description="RT custom field holding the defect key")
    verify_tls: bool = True
    timeout: Duration = 15.0
    priorities: dict[int, int] = Field(default_factory=lambda: {1: 90, 2: 70, 3: 50, 4: 30},
                                       description="RT priority for each bigbang priority")
    fields: dict[Literal["run_id", "rollout", "mode", "priority_name", "response_due", "resolve_due", "user",
                         "reporter"], str] = Field(
        default_factory=dict, description="more ticket custom fields: bigbang field -> RT custom field name")

    @model_validator(mode="after")
    def _complete(self) -> TicketSystemSettings:
        if self.kind == "rt":
            missing = [n for n in ("url", "user", "password") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"ticket_system kind 'rt' needs {', '.join(missing)}")
        return self


class EndUser(_Model):
    """A person who works on a device (`user:` on a workstation or thin client names their id)."""

    id: str
    name: str
    phone: str | None = None
    email: str | None = None


class SlaTarget(_Model):
    response: Duration = Field(description="first response by support staff within this")
    resolve: Duration = Field(description="resolved within this")


def _default_sla() -> dict[int, SlaTarget]:
    hours = {1: (0.25, 4), 2: (1, 24), 3: (4, 72), 4: (24, 240)}
    return {level: SlaTarget(response=r * 3600, resolve=f * 3600) for level, (r, f) in hours.items()}


class Support(_Model):
    """The post-rollout support queue: priority rule, SLA, ticket system, probing, staff on duty."""

    users: list[EndUser] = Field(default_factory=list, description="end users: names and phones shown on defects")
    sla: dict[int, SlaTarget] = Field(default_factory=_default_sla,
                                      description="response and resolve targets per priority (1-4)")
    on_duty: list[int] = Field(default_factory=list,
                               description="support staff on duty per day after the weekend (the last value repeats); "
                                           "default: the rollout's support staff every day")
    defects_per_person_day: float = Field(20.0, gt=0, description="defects one support person handles a day")
    report_rate_limit: int = Field(10, ge=1, description="self-service reports per device (and per address) an hour")

    priority: PriorityRule = Field(default_factory=lambda: PriorityRule.model_validate({}))
    ticket_system: TicketSystemSettings = Field(default_factory=lambda: TicketSystemSettings.model_validate({}))
    probe_sample_percent: float = Field(10.0, ge=0, le=100, description="share of healthy devices probed per run")


# ---------------------------------------------------------------- the whole inventory

class Inventory(_Model):
    """A validated inventory. Build it with `bigbang.inventory.load_inventory`."""

    rollout: Rollout
    teams: list[Team] = Field(default_factory=list)
    servers: list[Server] = Field(default_factory=list)
    locations: list[Location] = Field(default_factory=list)
    connectors: dict[str, Any] = Field(default_factory=dict)
    rehearsal: Rehearsal = Field(default_factory=lambda: Rehearsal.model_validate({}))
    support: Support = Field(default_factory=lambda: Support.model_validate({}))
    schedule: ScheduleSettings = Field(default_factory=lambda: ScheduleSettings.model_validate({}))
    source: str = ""
    digest: str = ""

    @cached_property
    def location_by_id(self) -> dict[str, Location]:
        return {loc.id: loc for loc in self.locations}

    @cached_property
    def server_by_name(self) -> dict[str, Server]:
        return {s.name: s for s in self.servers}

    @cached_property
    def team_by_id(self) -> dict[str, Team]:
        return {t.id: t for t in self.teams}

    @cached_property
    def device_by_hostname(self) -> dict[str, tuple[Location, Device]]:
        return {d.hostname: (loc, d) for loc in self.locations for d in loc.devices}

    @property
    def device_count(self) -> int:
        return sum(len(loc.workstations) + len(loc.thin_clients) for loc in self.locations)

    def summary(self) -> str:
        ws = sum(len(loc.workstations) for loc in self.locations)
        tc = sum(len(loc.thin_clients) for loc in self.locations)
        return (
            f"{self.rollout.name}: {len(self.locations)} locations, {ws} workstations, "
            f"{tc} thin clients, {len(self.servers)} servers, {len(self.teams)} teams"
        )


CASCADE_KINDS: dict[str, type[BaseModel]] = {"workstation": Workstation, "thin_client": ThinClient, "server": Server, "location": Location}
