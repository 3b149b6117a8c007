"""Connector registry. `CONNECTORS` maps a name to its type; settings models feed validation."""

from __future__ import annotations

from bigbang.connectors.base import Action, Connector, ConnectorContext, ConnectorType, Outcome
from bigbang.connectors.ssh import SshSettings
from bigbang.connectors.ums import UmsSettings
from bigbang.connectors.vsphere import VsphereSettings
from bigbang.connectors.winrm import WinrmSettings
from bigbang.connectors.xen import XenSettings
from bigbang.inventory.model import Rehearsal

SERVER_STEPS = frozenset({"srv.precheck", "srv.snapshot", "srv.provision", "srv.verify"})
WORKSTATION_STEPS = frozenset({"ws.prestage", "ws.image", "ws.verify"})
THIN_CLIENT_STEPS = frozenset({"tc.reassign", "tc.verify"})

CONNECTORS: dict[str, ConnectorType] = {
    c.name: c
    for c in (
        ConnectorType(
            name="simulated",
            summary="rehearsals: simulated durations, failures and device state (settings under `rehearsal:`)",
            settings_model=Rehearsal,
            step_kinds=SERVER_STEPS | WORKSTATION_STEPS | THIN_CLIENT_STEPS,
            factory="bigbang.connectors.simulated:create",
            live=False,
        ),
        ConnectorType(
            name="vsphere",
            summary="VMware vCenter through pyvmomi: clone, configure and power on servers",
            settings_model=VsphereSettings,
            step_kinds=SERVER_STEPS,
            factory="bigbang.connectors.vsphere:create",
        ),
        ConnectorType(
            name="xen",
            summary="Citrix Hypervisor (XenServer/XCP-ng) through XenAPI",
            settings_model=XenSettings,
            step_kinds=SERVER_STEPS,
            factory="bigbang.connectors.xen:create",
        ),
        ConnectorType(
            name="ssh",
            summary="Linux-based thin clients over SSH (paramiko)",
            settings_model=SshSettings,
            step_kinds=THIN_CLIENT_STEPS,
            factory="bigbang.connectors.ssh:create",
        ),
        ConnectorType(
            name="ums",
            summary="IGEL thin clients through IGEL UMS (IMI REST API v3)",
            settings_model=UmsSettings,
            step_kinds=THIN_CLIENT_STEPS,
            factory="bigbang.connectors.ums:create",
        ),
        ConnectorType(
            name="winrm",
            summary="Windows workstations and the deployment server over WinRM (pywinrm)",
            settings_model=WinrmSettings,
            step_kinds=WORKSTATION_STEPS,
            factory="bigbang.connectors.winrm:create",
        ),
    )
}

__all__ = ["Action", "Connector", "ConnectorContext", "ConnectorType", "Outcome", "CONNECTORS"]
