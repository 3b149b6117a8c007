"""Changes to a run made from a shell on a technician's behalf (check-offs, sign-offs, problems, check-ins).

A shell has no sign-in: `--by` alone would let anyone act as anyone. An ops lead's credential vouches
for the change instead (`--lead`, or the ops lead acting as themself), and the audit trail records
who entered it on whose behalf, from where.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys

from bigbang.errors import UserError

LEAD_ENV = "BIGBANG_OPS_LEAD"
LEAD_PASSWORD_ENV = "BIGBANG_OPS_LEAD_PASSWORD"


def add_lead_option(parser) -> None:
    parser.add_argument("--lead", metavar="OPS_LEAD", default=os.environ.get(LEAD_ENV),
                        help=f"the ops lead entering this (default: ${LEAD_ENV}, or --by when that is an ops lead); "
                             f"their password is asked, or read from ${LEAD_PASSWORD_ENV}")


def shell_actor(inventory, location_id: str, by: str, lead: str | None):
    """The `Actor` for a change at `location_id` made from this shell as `by`, vouched for by an ops lead.

    `by` must be a person of the inventory allowed to change the location (its team's technician, or an
    ops lead); the ops lead's password is checked before anything is written."""
    from bigbang.store.field import Actor
    from bigbang.web.auth import accounts_from_inventory

    accounts = {a.user.id: a for a in accounts_from_inventory(inventory).values()}
    account = accounts.get(by)
    if account is None:
        raise UserError(f"unknown person '{by}'", hint="use a technician's or staff member's id from the inventory")
    user = account.user
    team = inventory.location_by_id[location_id].team
    if not user.can_change(team):
        raise UserError(f"{user.id} is not in {team}, the team of {location_id}",
                        hint="only that team's technicians or an ops lead may change it")
    lead_id = _verified_lead(accounts, by, lead)
    source = f"cli {getpass.getuser()}@{socket.gethostname()} entered by ops lead {lead_id}"
    return Actor(user.id, user.role, source)


def _verified_lead(accounts, by: str, lead: str | None) -> str:
    """The ops lead whose credential vouches for the change, once their password is checked."""
    from bigbang.web.passwords import verify_password

    lead_id = lead or (by if accounts[by].user.role == "ops_lead" else None)
    if not lead_id:
        raise UserError(f"changing a run from the shell as {by} needs an ops lead's credential",
                        hint=f"give --lead OPS_LEAD_ID (or set {LEAD_ENV}); the password is asked, "
                             f"or read from {LEAD_PASSWORD_ENV}")
    account = accounts.get(lead_id)
    if account is None or account.user.role != "ops_lead":
        raise UserError(f"'{lead_id}' is not an ops lead of this run's inventory")
    if os.environ.get(LEAD_PASSWORD_ENV) is not None:
        password = os.environ[LEAD_PASSWORD_ENV]
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password of ops lead {lead_id}: ")
    else:
        raise UserError(f"no password for ops lead {lead_id}", hint=f"run it in a terminal, or set {LEAD_PASSWORD_ENV}")
    if not verify_password(password, account.password_hash):
        raise UserError(f"wrong password for ops lead {lead_id}")
    return lead_id
