"""SSH connector: Linux-based thin clients through paramiko."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bigbang.errors import LiveModeUnavailable
from bigbang.inventory.model import SecretRef


class SshSettings(BaseModel):
    """How to reach thin clients over SSH. Host keys are verified against `known_hosts`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    username: str = Field("root", description="login user")
    port: int = Field(22, ge=1, le=65535)
    key_file: str | None = Field(None, description="private key file; the SSH agent is used when empty")
    key_passphrase: SecretRef | None = Field(None, description="reference to the key's passphrase")
    known_hosts: str = Field("~/.ssh/known_hosts", description="file of trusted host keys")
    trust_on_first_use: bool = Field(False, description="accept and record unknown host keys (first contact only)")
    connect_timeout: float = Field(10, gt=0)
    command_timeout: float = Field(300, gt=0)
    reboot_timeout: float = Field(600, gt=0, description="seconds to wait for a device to come back after reboot")
    max_parallel: int = Field(50, ge=1, le=1000, description="concurrent SSH sessions")


def create(settings: SshSettings, context):  # pragma: no cover - replaced by the live connector
    raise LiveModeUnavailable("the ssh connector cannot run live in this version", hint="rehearse with --mode rehearsal")
