"""WinRM connector: Windows workstations and the deployment server through pywinrm."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bigbang.errors import LiveModeUnavailable
from bigbang.inventory.model import SecretRef


class WinrmSettings(BaseModel):
    """How to reach Windows hosts over WS-Management. HTTPS certificates are verified by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    username: SecretRef | str = Field(description="user name (text or a reference)")
    password: SecretRef = Field(description="reference to the password")
    transport: str = Field("ntlm", pattern="^(basic|ntlm|kerberos)$")
    scheme: str = Field("https", pattern="^(http|https)$")
    port: int | None = Field(None, ge=1, le=65535, description="5986 for https, 5985 for http when empty")
    ca_bundle: str | None = None
    insecure: bool = Field(False, description="skip certificate verification (only for labs)")
    deployment_server: str | None = Field(None, description="host that pre-stages devices (MDT/MECM/FOG)")
    operation_timeout: float = Field(60, gt=0)
    read_timeout: float = Field(90, gt=0)
    image_timeout: float = Field(5400, gt=0, description="seconds to wait for a device to come up re-imaged")
    max_parallel: int = Field(50, ge=1, le=1000)


def create(settings: WinrmSettings, context):  # pragma: no cover - replaced by the live connector
    raise LiveModeUnavailable("the winrm connector cannot run live in this version", hint="rehearse with --mode rehearsal")
