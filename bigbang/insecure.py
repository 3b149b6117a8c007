"""Insecure transport options in an inventory, for a warning line in `validate`, `plan` and `run`.

They are allowed (labs need them) but never silent: WinRM over HTTP (with basic
authentication the password crosses the network readable), message encryption
off, certificate checks off (`insecure: true`, RT's `verify_tls: false`), SSH
trust on first use, Request Tracker over plain HTTP.
"""

from __future__ import annotations

from typing import Any

from bigbang.inventory.model import Inventory


def insecure_options(inventory: Inventory) -> list[str]:
    """One line per insecure option, `connectors.winrm.scheme: http: ...`."""
    found: list[str] = []
    connectors: dict[str, Any] = inventory.connectors or {}
    for name, model in sorted(connectors.items()):
        settings = model.model_dump() if hasattr(model, "model_dump") else model
        if not isinstance(settings, dict):
            continue
        where = f"connectors.{name}"
        if settings.get("insecure") is True:
            found.append(f"{where}.insecure: true: TLS certificates are not verified (anyone in between can "
                         "read and change the traffic)")
        if name == "winrm":
            http = str(settings.get("scheme", "https")).lower() == "http"
            transport = str(settings.get("transport", "ntlm")).lower()
            if http and transport == "basic":
                found.append(f"{where}: basic authentication over HTTP sends the password readable to anyone "
                             "on the network; use scheme: https")
            elif http:
                found.append(f"{where}.scheme: http: WinRM without TLS (use https)")
            if str(settings.get("message_encryption", "auto")).lower() == "never":
                found.append(f"{where}.message_encryption: never: commands and their output cross the network "
                             "unencrypted")
        if name == "ssh" and settings.get("trust_on_first_use") is True:
            found.append(f"{where}.trust_on_first_use: true: unknown host keys are accepted on first contact")
    tickets = inventory.support.ticket_system if getattr(inventory, "support", None) else None
    if tickets is not None and tickets.kind == "rt":
        if tickets.url and tickets.url.lower().startswith("http://"):
            found.append("support.ticket_system.url: Request Tracker over plain HTTP: its password and the "
                         "defects cross the network readable; use https")
        if not tickets.verify_tls:
            found.append("support.ticket_system.verify_tls: false: RT's certificate is not verified")
    return found


def warning_lines(inventory: Inventory) -> list[str]:
    return [f"warning: insecure option {line}" for line in insecure_options(inventory)]
