"""vSphere connector: servers on VMware vCenter through pyvmomi."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bigbang.errors import LiveModeUnavailable
from bigbang.inventory.model import SecretRef


class VsphereSettings(BaseModel):
    """How to reach vCenter. Certificates are verified unless `insecure: true`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field(description="vCenter host name or address")
    port: int = Field(443, ge=1, le=65535)
    username: SecretRef | str = Field(description="user name (text or a reference)")
    password: SecretRef = Field(description="reference to the password: {env: VAR} or {prefect_secret: NAME}")
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust instead of the system store")
    thumbprint: str | None = Field(None, description="pinned SHA-256 certificate fingerprint (hex, colons allowed)")
    insecure: bool = Field(False, description="skip certificate verification (only for labs)")
    datacenter: str | None = Field(None, description="default datacenter for servers that name none")
    max_parallel_clones: int = Field(4, ge=1, le=64, description="concurrent clones per cluster")
    max_parallel_per_datastore: int = Field(2, ge=1, le=64, description="concurrent clones per datastore")
    task_timeout: float = Field(1800, gt=0, description="seconds to wait for one vCenter task")
    ip_timeout: float = Field(900, gt=0, description="seconds to wait for guest tools to report an IP")
    drift: str = Field("report", pattern="^(report|reconfigure)$", description="what to do with a VM that differs")


def create(settings: VsphereSettings, context):  # pragma: no cover - replaced by the live connector
    raise LiveModeUnavailable(
        "the vsphere connector cannot run live in this version",
        hint="rehearse with --mode rehearsal",
    )
