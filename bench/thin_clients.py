"""Reassign N thin clients on real sshd hosts: `bigbang run --mode live`, then the same change with Ansible.

Both are timed as whole processes: `python -m bigbang run INVENTORY --mode live` of an inventory of
the N hosts (one location, its sign-off recorded up front, Prefect's start-up included) against
`ansible-playbook`. bigbang four times: *first* (the first run on this machine: a new Prefect home and
no migrated Prefect database to copy, so Prefect's embedded server creates and migrates its database;
at its end bigbang makes that template in the background, bigbang/prefect_db.py), *new home* (another
new Prefect home, which starts from the template), *cold* (that home again, no Prefect server running:
the command starts Prefect's embedded server) and *warm* (the warm local server `bigbang run` keeps).
Same hosts (reset in between), same rendered command templates, same parallelism (forks = the team's
parallel_devices), the same verification (a new boot id and the new profile active, read back from
each host). Ansible gets its usual speed-ups: pipelining, ControlPersist, no fact gathering, a fixed
interpreter, the `free` strategy, and its reboot module.

    python bench/thin_clients.py [--hosts 200] [--parallel 50] [--skip-ansible]

Prints one JSON line per measurement and one with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigbang.connectors.base import ConnectorContext  # noqa: E402
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


def run_bigbang_process(lab: ThinClientLab, hosts, parallel: int, workdir: Path, *, label: str,
                        prefect_home: Path) -> tuple[float, int, str]:
    """The whole `bigbang run --mode live` process; (seconds, hosts reassigned on the device, error)."""
    import yaml

    first = thin_client_params(hosts[0])
    inventory = {
        "rollout": {
            "name": "Thin-client bench",
            "window": {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00", "timezone": "Europe/Copenhagen"},
            "images": {"win11": {"version": "10.0.26100.2314"}},
            "thin_client_profiles": {first["target_profile"]: {
                "firmware": first["firmware"], "storefront_url": first["storefront_url"],
                "hostname_pattern": "{location}-tc-{index:02d}", "settings": first["settings"]}},
            "failure_policy": {"retries": 1, "retry_delay": "1s", "max_fail_percent": 100},
            "signoff_timeout": "60s",
        },
        "teams": [{"id": "bench", "name": "Bench", "capacity": {"parallel_devices": parallel}}],
        "locations": [{
            "id": first["location"], "name": first["location_name"], "address": "127.0.0.1", "team": "bench",
            "thin_clients": [{"hostname": h.name, "mac": f"00:e0:c5:{i // 65536 % 256:02x}:{i // 256 % 256:02x}:{i % 256:02x}",
                              "target_profile": first["target_profile"], "address": h.address,
                              "current_profile": first["current_profile"],
                              "new_hostname": thin_client_params(h)["hostname"]} for i, h in enumerate(hosts)],
        }],
        "connectors": {"ssh": lab.ssh_settings(max_parallel=parallel, reboot_timeout=120, command_timeout=60)},
    }
    label = label.replace(" ", "-")
    path = workdir / f"inventory-{label}.yaml"
    path.write_text(yaml.safe_dump(inventory, allow_unicode=True, sort_keys=False))
    ledger_url = f"sqlite:///{workdir / f'ledger-{label}.db'}"
    run_id = f"bench-{label.replace(' ', '-')}-{int(time.time())}"
    from bigbang.store import Ledger

    Ledger(ledger_url).sign_off(run_id, first["location"], "Bench Technician", "signed before the run")
    env = dict(os.environ, PYTHONPATH=str(ROOT), BIGBANG_HOME=str(workdir / "state"),
               BIGBANG_REPORTS=str(workdir / "reports"), PREFECT_HOME=str(prefect_home),
               BIGBANG_CACHE=str(workdir / "cache"),
               BIGBANG_WARM_SERVER="1" if label == "warm" else "0")
    env.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bigbang", "run", str(path), "--mode", "live", "--quiet",
                           "--ledger", ledger_url, "--run-id", run_id], env=env, capture_output=True, text=True,
                          cwd=workdir)
    seconds = time.perf_counter() - started
    ok = sum(1 for h in hosts if h.running_hostname == thin_client_params(h)["hostname"])
    error = "" if proc.returncode == 0 else (proc.stdout[-600:] + proc.stderr[-600:])
    return seconds, ok, error


def start_warm(workdir: Path) -> None:
    os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    os.environ["BIGBANG_CACHE"] = str(workdir / "cache")
    os.environ["BIGBANG_WARM_SERVER"] = "1"
    os.environ.pop("PREFECT_API_URL", None)
    from bigbang import warm

    warm.start_in_background()
    deadline = time.monotonic() + 180
    while warm.use() is None and time.monotonic() < deadline:
        time.sleep(1)
    os.environ.pop("PREFECT_API_URL", None)


def template_made(workdir: Path) -> dict:
    """Wait for the migrated Prefect database the first run's end started making in the background (so
    it does not share the cores with the next measurement); what its maker says it took."""
    os.environ["BIGBANG_CACHE"] = str(workdir / "cache")
    from bigbang import prefect_db

    made = prefect_db.wait_until_made(timeout=300)
    log = prefect_db.template_dir() / "make.log"
    said = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    seconds = said[0].rsplit(" in ", 1)[-1].removesuffix(" s") if said and " in " in said[0] else None
    return {"bench": "thin_clients", "measure": "prefect_template", "made": made,
            "seconds": float(seconds) if seconds else None}


def stop_warm(workdir: Path) -> None:
    os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    from bigbang import warm

    warm.stop()


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

        times: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="bigbang-bench-tc-") as tmp:
            workdir = Path(tmp)
            for label in ("first", "new home", "cold", "warm"):
                if label == "new home":
                    print(json.dumps(template_made(workdir)), flush=True)
                if label == "warm":
                    start_warm(workdir)
                for host in hosts:
                    host.reset()
                home = workdir / ("prefect-first" if label == "first" else "prefect")
                try:
                    seconds, reassigned, error = run_bigbang_process(lab, hosts, args.parallel, workdir,
                                                                     label=label, prefect_home=home)
                finally:
                    if label == "warm":
                        stop_warm(workdir)
                times[label] = seconds
                line = {"bench": "thin_clients", "tool": "bigbang run --mode live", "start": label,
                        "hosts": len(hosts), "parallel": args.parallel, "seconds": round(seconds, 2),
                        "reassigned_on_device": reassigned}
                if error:
                    line["error"] = error
                print(json.dumps(line), flush=True)

        if args.skip_ansible:
            return
        for host in hosts:
            host.reset()
        assert not any(h.running_hostname == thin_client_params(h)["hostname"] for h in hosts)
        with tempfile.TemporaryDirectory(prefix="bigbang-ansible-") as tmp:
            a_seconds, a_ok, error = run_ansible(lab, hosts, args.parallel, Path(tmp))
        line = {"bench": "thin_clients", "tool": "ansible-playbook", "hosts": len(hosts), "forks": args.parallel,
                "seconds": round(a_seconds, 2), "reassigned_on_device": a_ok}
        if error:
            line["error"] = error
        print(json.dumps(line), flush=True)
        print(json.dumps({"bench": "thin_clients", "measure": "ansible_over_bigbang", "target": 10,
                          "ratio_first": round(a_seconds / times["first"], 2),
                          "ratio_new_home": round(a_seconds / times["new home"], 2),
                          "ratio_cold": round(a_seconds / times["cold"], 2),
                          "ratio_warm": round(a_seconds / times["warm"], 2)}), flush=True)
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
