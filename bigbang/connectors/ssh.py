"""SSH connector: Linux-based thin clients, what a reassignment is (the transport is ssh_transport.py).

tc.reassign reads the device's state first and does only what differs: write the
location profile, apply it, reboot, reconnect (a new boot id proves the reboot) and
verify. A resume after a crash therefore continues where the device stopped. tc.verify
reads the state and reports expected against found, for defect tracking.

The changing scripts (write, apply, reboot) run in one session, one after the other, stopping at the
first that fails; each finished one is noted as a sub-step as soon as its output says so. The reboot
wait has no fixed sleep: the connection the reboot ran on ends when the device goes down, then the boot
id is polled with a short backoff (quick first tries, then at most every `reboot_poll` seconds).

Host keys are verified against `known_hosts` (see ssh_transport.py); one connection per host is reused.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bigbang.connectors._commands import CommandResult, CommandTemplates, compare, record_substep
from bigbang.connectors.base import Action, ConnectorContext, Outcome
from bigbang.errors import ConnectorError
from bigbang.inventory.model import SecretRef

if TYPE_CHECKING:
    from bigbang.connectors.ssh_transport import SshSessions

# The first pause between looks at a rebooting device; each next one doubles, up to reboot_poll.
FIRST_REBOOT_POLL = 0.05
# How long past the reboot template's `reboot_in` the connection may stay up before the boot id is polled on it.
DOWN_GRACE = 5.0


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
    commands_dir: str | None = Field(None, description="directory of command templates overriding the defaults")
    reboot_poll: float = Field(0.3, gt=0, description="longest pause between looks at a rebooting device "
                                                     "(the first come sooner: 0.05 s, doubling)")


class SshConnector:
    name: ClassVar[str] = "ssh"

    def __init__(self, settings: SshSettings, context: ConnectorContext):
        from bigbang.connectors import ssh_transport  # paramiko only once a run needs it

        self.settings = settings
        self.context = context
        self.templates = CommandTemplates(settings.commands_dir)
        self.ssh: SshSessions = ssh_transport.SshSessions(settings, context)
        self._network_errors = ssh_transport.NETWORK_ERRORS

    # ------------------------------------------------------------ protocol
    def run(self, action: Action) -> Outcome:
        address = str(action.params.get("address") or action.target)
        try:
            if action.kind == "tc.reassign":
                return self._reassign(action, address)
            if action.kind == "tc.verify":
                return self._verify(action, address)
            return Outcome.failed(f"the ssh connector cannot run {action.kind}", transient=False)
        except ConnectorError as exc:
            return Outcome.from_error(exc, address=address)
        except self._network_errors as exc:  # a network error from an unexpected place
            self.ssh.drop(address)
            return Outcome.failed(f"connection to {address} failed: {exc.__class__.__name__}: {exc}",
                                  transient=True, address=address)

    def close(self) -> None:
        self.ssh.close()

    # ------------------------------------------------------------ steps
    def expected(self, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """What the device should report after the reassignment, and the profile file's text."""
        profile = self.templates.render("tc_profile.conf.j2", self._variables(params))
        expected = {
            "profile": params.get("target_profile"), "hostname": params.get("hostname"),
            "location": params.get("location"), "storefront_url": params.get("storefront_url"),
            "firmware": params.get("firmware"), "profile_sha256": hashlib.sha256(profile.encode()).hexdigest(),
        }
        return expected, profile

    def _variables(self, params: Any, **extra: Any) -> dict[str, Any]:
        variables = {k: params.get(k) for k in ("location", "location_name", "mac", "address", "current_profile",
                                                 "target_profile", "firmware", "storefront_url", "hostname")}
        variables.update(settings=dict(params.get("settings") or {}), vars=dict(params.get("vars") or {}))
        variables.update(extra)
        return variables

    def _reassign(self, action: Action, address: str) -> Outcome:
        expected, profile = self.expected(dict(action.params))
        sha = expected["profile_sha256"]
        state = self.state(address)
        done: list[str] = []
        if not compare(expected, state):
            return Outcome(ok=True, changed=False, message=f"already on {expected['profile']} as {state['hostname']}",
                           facts={"substeps": done, "expected": expected, "found": state, "address": address})
        variables = self._variables(action.params, profile=profile, profile_sha256=sha,
                                    profile_b64=base64.b64encode(profile.encode()).decode())
        try:
            return self._change(action, address, expected, state, variables, done)
        except ConnectorError as exc:  # keep what was done: a resume and the defect report both need it
            return Outcome.from_error(exc, changed=bool(done), substeps=done, expected=expected, address=address)

    def _change(self, action: Action, address: str, expected: dict[str, Any], state: dict[str, str],
                variables: dict[str, Any], done: list[str]) -> Outcome:
        sha = expected["profile_sha256"]
        firmware = expected["firmware"]
        scripts = []  # (template, the sub-step it completes): what differs, in order, run in one session
        if state.get("profile_sha256") != sha:
            scripts.append(("tc_write_profile.sh.j2", "profile written"))
        if state.get("active_sha256") != sha:
            scripts.append(("tc_apply.sh.j2", "profile applied"))
        reboot = state.get("hostname") != expected["hostname"] or bool(firmware and state.get("firmware") != firmware)
        if reboot:
            scripts.append(("tc_reboot.sh.j2", ""))
        notes = {template.split(".")[0]: note for template, note in scripts}

        def finished(result: CommandResult) -> None:
            if result.ok and notes.get(result.name):
                done.append(notes[result.name])
                record_substep(self.context, action.step_id, notes[result.name])

        results = self.ssh.run_scripts(address, [(t.split(".")[0], self.templates.render(t, variables))
                                                 for t, _ in scripts], on_done=finished)
        for result in results:
            if not result.ok:
                raise result.failure(address)
        if reboot:
            state = self._wait_for_reboot(address, state.get("boot_id"), _seconds(results[-1].facts.get("reboot_in")))
            done.append("rebooted")
            record_substep(self.context, action.step_id, "rebooted")
        else:
            state = self.state(address)
        mismatches = compare(expected, state)
        facts = {"substeps": done, "expected": expected, "found": state, "mismatches": mismatches,
                 "address": address}
        if mismatches:
            return Outcome(ok=False, changed=bool(done), transient=False, facts=facts,
                           message="after reassignment: " + "; ".join(mismatches))
        return Outcome(ok=True, changed=True, facts=facts,
                       message=f"{', '.join(done)}; reports {expected['profile']} as {state['hostname']}")

    def _verify(self, action: Action, address: str) -> Outcome:
        expected, _ = self.expected(dict(action.params))
        state = self.state(address)
        mismatches = compare(expected, state)
        facts = {"expected": expected, "found": state, "mismatches": mismatches, "address": address,
                 "profile": state.get("profile"), "hostname": state.get("hostname"), "firmware": state.get("firmware")}
        if mismatches:
            return Outcome(ok=False, transient=False, facts=facts, message="; ".join(mismatches))
        return Outcome(ok=True, facts=facts, message=f"reports {state['profile']} as {state['hostname']}")

    def state(self, address: str) -> dict[str, str]:
        return self._step(address, "tc_state.sh.j2", {}).facts

    def execute(self, address: str, command: str, *, name: str = "command",
                timeout: float | None = None) -> CommandResult:
        """Run one command on a device (see SshSessions.execute)."""
        return self.ssh.execute(address, command, name=name, timeout=timeout)

    def _step(self, address: str, template: str, variables: dict[str, Any]) -> CommandResult:
        result = self.ssh.execute(address, self.templates.render(template, variables), name=template.split(".")[0])
        if not result.ok:
            raise result.failure(address)
        return result

    def _wait_for_reboot(self, address: str, old_boot_id: str | None, reboot_in: float) -> dict[str, str]:
        """The state once the device reports a new boot id; fails after reboot_timeout. No fixed sleep: first
        the connection the reboot ran on ends (the device went down), or `reboot_in` + DOWN_GRACE passes;
        then the boot id is read, reconnecting as needed, with pauses from FIRST_REBOOT_POLL doubling up to
        reboot_poll (a pause ends early when a connection still open ends)."""
        s = self.settings
        started = time.monotonic()
        deadline = started + s.reboot_timeout
        self.ssh.wait_until_closed(address, min(deadline, started + reboot_in + DOWN_GRACE) - started)
        pause, last_error = FIRST_REBOOT_POLL, "no answer"
        while True:
            try:
                state = self.state(address)
                if state.get("boot_id") and state.get("boot_id") != old_boot_id:
                    return state
                last_error = "still up with the same boot id"
            except ConnectorError as exc:
                if not exc.transient:
                    raise
                last_error = exc.message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectorError(f"{address} did not come back within {s.reboot_timeout:g} s after "
                                     f"the reboot (last: {last_error})", transient=False)
            self.ssh.pause(address, min(pause, remaining))
            pause = min(pause * 2, s.reboot_poll)


def _seconds(value: str | None) -> float:
    """The reboot template's `reboot_in` (seconds until the device goes down); 0 when absent or odd."""
    try:
        return max(0.0, min(float(value or 0), 300.0))
    except ValueError:
        return 0.0


def create(settings: SshSettings, context: ConnectorContext) -> SshConnector:
    return SshConnector(settings, context)
