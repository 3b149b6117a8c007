"""Reassign N thin clients on real sshd hosts with bigbang's ssh connector, then the same change with Ansible.

Same hosts (reset in between), same rendered command templates, same parallelism (forks =
max_parallel). Ansible gets its usual speed-ups: pipelining, ControlPersist, no fact gathering,
a fixed interpreter, the `free` strategy, and its reboot module (running the same reboot command
as our tc_reboot template, then waiting for a new boot id as our connector does).

    python bench/thin_clients.py [--hosts 200] [--parallel 50]

Prints one JSON line per measurement and one with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigbang.connectors.base import Action, ConnectorContext  # noqa: E402
from bigbang.connectors.ssh import SshSettings, create  # noqa: E402
from tests.peers.sshd import ThinClientLab, thin_client_params  # noqa: E402

PLAYBOOK = """
- name: Reassign thin clients to their location profile
  hosts: thin_clients
  gather_facts: false
  strategy: free
  tasks:
    - name: Read the device state
      ansible.builtin.shell: "{{ state_cmd }}"
      register: before
      changed_when: false
    - name: Write the location profile
      ansible.builtin.shell: "{{ write_cmd }}"
      when: ("profile_sha256=" ~ profile_sha256) not in before.stdout
    - name: Apply it
      ansible.builtin.shell: "{{ apply_cmd }}"
      when: ("active_sha256=" ~ profile_sha256) not in before.stdout
    - name: Reboot and wait for a new boot id
      ansible.builtin.reboot:
        reboot_command: "/bin/sh -c {{ reboot_cmd | quote }}"
        boot_time_command: cat "$DEVICE_ROOT/proc/sys/kernel/random/boot_id"
        test_command: "true"
        connect_timeout: 5
        reboot_timeout: 120
      when: ("hostname=" ~ new_hostname ~ "\\n") not in (before.stdout ~ "\\n")
    - name: Verify the profile and hostname
      ansible.builtin.shell: "{{ state_cmd }}"
      register: after
      changed_when: false
      failed_when: >-
        ("hostname=" ~ new_hostname) not in after.stdout or ("active_sha256=" ~ profile_sha256) not in after.stdout
"""


def run_bigbang(lab: ThinClientLab, hosts, parallel: int) -> tuple[float, int]:
    settings = SshSettings(**lab.ssh_settings(max_parallel=parallel, reboot_timeout=120, command_timeout=60))
    conn = create(settings, ConnectorContext(run_id="bench", inventory=None, resolve_secret=lambda ref: ""))

    failures: list[str] = []

    def device(host) -> bool:
        params = thin_client_params(host)
        for step in ("tc.reassign", "tc.verify"):
            outcome = conn.run(Action(f"{host.name}:{step}", step, host.name, 1, params))
            if not outcome.ok:
                failures.append(f"{host.name} {step}: {outcome.message}")
                return False
        return True

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        ok = sum(pool.map(device, hosts))
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, ok, failures


def run_ansible(lab: ThinClientLab, hosts, parallel: int, workdir: Path) -> tuple[float, int, str]:
    import base64

    renderer = create(SshSettings(**lab.ssh_settings()), ConnectorContext("bench", None, lambda ref: ""))
    host_vars = workdir / "host_vars"
    host_vars.mkdir()
    lines = ["[thin_clients]"]
    for host in hosts:
        params = thin_client_params(host)
        expected, profile = renderer.expected(params)
        variables = renderer._variables(params, profile=profile, profile_sha256=expected["profile_sha256"],
                                        profile_b64=base64.b64encode(profile.encode()).decode())
        render = renderer.templates.render
        values = {"state_cmd": render("tc_state.sh.j2", {}), "write_cmd": render("tc_write_profile.sh.j2", variables),
                  "apply_cmd": render("tc_apply.sh.j2", variables),
                  "reboot_cmd": render("tc_reboot.sh.j2", variables), "profile_sha256": expected["profile_sha256"],
                  "new_hostname": params["hostname"]}
        text = "\n".join(f"{k}: !unsafe {json.dumps(v)}" for k, v in values.items())
        (host_vars / f"{host.name}.yml").write_text(text + "\n")
        lines.append(f"{host.name} ansible_host={host.address}")
    (workdir / "hosts.ini").write_text("\n".join(lines) + "\n[thin_clients:vars]\n"
                                       f"ansible_port={lab.port}\nansible_user=bbpeer\n"
                                       f"ansible_ssh_private_key_file={lab.client_key}\n"
                                       "ansible_python_interpreter=/usr/bin/python3\n")
    (workdir / "site.yml").write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_PIPELINING="1", ANSIBLE_FORKS=str(parallel), ANSIBLE_HOST_KEY_CHECKING="1",
               ANSIBLE_SSH_ARGS=f"-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={lab.known_hosts} "
                                "-o StrictHostKeyChecking=yes",
               ANSIBLE_CONTROL_PATH_DIR=str(workdir / "cp"), ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"),
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_NOCOLOR="1",
               ANSIBLE_DISPLAY_SKIPPED_HOSTS="0", ANSIBLE_CONFIG=str(workdir / "none.cfg"))
    started = time.perf_counter()
    proc = subprocess.run(["ansible-playbook", *(["-vvv"] if os.environ.get("BENCH_DEBUG") else []), "-i", str(workdir / "hosts.ini"), str(workdir / "site.yml")],
                          env=env, capture_output=True, text=True, cwd=workdir)
    seconds = time.perf_counter() - started
    ok = sum(1 for h in hosts if h.running_hostname == thin_client_params(h)["hostname"])
    if proc.returncode and os.environ.get("BENCH_DEBUG"):
        print(proc.stdout[-12000:], proc.stderr[-2000:], file=sys.stderr)
    tail = proc.stdout.strip().splitlines()[-3:] if proc.returncode else []
    return seconds, ok, " | ".join(tail) + proc.stderr[-300:] if proc.returncode else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--skip-ansible", action="store_true", help="measure bigbang only")
    args = parser.parse_args()

    lab = ThinClientLab()
    try:
        started = time.perf_counter()
        hosts = lab.add_hosts(args.hosts, prefix="tc")
        print(json.dumps({"bench": "thin_clients", "measure": "lab_start", "hosts": len(hosts),
                          "seconds": round(time.perf_counter() - started, 2)}), flush=True)

        seconds, ok, failures = run_bigbang(lab, hosts, args.parallel)
        reassigned = sum(1 for h in hosts if h.running_hostname == thin_client_params(h)["hostname"])
        line = {"bench": "thin_clients", "tool": "bigbang", "hosts": len(hosts), "parallel": args.parallel,
                "seconds": round(seconds, 2), "ok": ok, "reassigned_on_device": reassigned}
        if failures:  # single attempts here: the runner would retry the transient ones
            line["failures"] = failures[:5]
        print(json.dumps(line), flush=True)

        if args.skip_ansible:
            return
        for host in hosts:
            host.reset()
        assert not any(h.running_hostname == thin_client_params(h)["hostname"] for h in hosts)
        with tempfile.TemporaryDirectory(prefix="bigbang-ansible-") as tmp:
            a_seconds, a_ok, error = run_ansible(lab, hosts, args.parallel, Path(tmp))
        line = {"bench": "thin_clients", "tool": "ansible", "hosts": len(hosts), "forks": args.parallel,
                "seconds": round(a_seconds, 2), "reassigned_on_device": a_ok}
        if error:
            line["error"] = error
        print(json.dumps(line), flush=True)
        print(json.dumps({"bench": "thin_clients", "measure": "ansible_over_bigbang",
                          "ratio": round(a_seconds / seconds, 2), "target": 5}), flush=True)
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
