"""The IMI test server checked by an independent client: PyPI's pyimi (speaks IMI v3).

pyimi turns certificate verification off by itself; that is fine against this throwaway
server and is not what bigbang's connector does. Every call below is pyimi's own API.
"""

from __future__ import annotations

import time

import pyimi
import pytest
import requests

from tests.peers import imi_server as imi_peer
from tests.peers.imi_server import populate

imi_server = imi_peer.imi_server  # the fixture


@pytest.fixture
def imi(imi_server):
    return pyimi.IMI(server="127.0.0.1", port=imi_server.port, user=imi_server.username,
                     password=imi_server.password)


def test_pyimi_lists_finds_moves_assigns_and_reboots(imi_server, imi):
    lab = imi_server
    devices = populate(lab, 3)
    assert lab.logins == 1

    listed = pyimi.Devices(imi)
    assert sorted(d.mac for d in listed) == sorted(d.mac for d in devices)
    found = listed.find(mac=devices[1].mac)
    assert found is not None and found.id == devices[1].id and found.name == devices[1].name

    pyimi.Directories(imi).create(name="HST-001 Holstebro Rådhus")
    directory = pyimi.Directories(imi).find(name="HST-001 Holstebro Rådhus")
    assert directory is not None and lab.directory("HST-001 Holstebro Rådhus") == directory.id
    found.move(directory)
    assert lab.devices[found.id].parent_id == directory.id

    profiles = pyimi.Profiles(imi)
    new, old = profiles.find(name="igel-citrix-2026"), profiles.find(name="igel-citrix-2022")
    answer = found.assign(new)
    assert "1 asssignments" in answer["message"]
    found.unassign(old)
    assert lab.assigned(lab.devices[found.id]) == ["igel-citrix-2026"]

    booted_before = found.info["lastBoottime"]
    result = found.reboot()
    assert result["CommandExecList"][0]["state"] == "SUCCESS" and result["CommandExecList"][0]["id"] == found.id
    assert found.online is False  # down while it reboots
    time.sleep(lab.reboot_seconds + 0.1)
    assert found.online is True
    assert found.info["lastBoottime"] > booted_before and found.lastContact >= found.info["lastBoottime"]
    assert lab.devices[found.id].applied_profiles == ["igel-citrix-2026"]
    assert lab.devices[found.id].firmware_id == "2"  # the new profile carries firmware 12.6.1
    assert found.settings2tc()["CommandExecList"][0]["state"] == "SUCCESS"

    counts = lab.requests
    assert counts["POST login"] == 1 and counts["POST thinclients?command=reboot"] == 1
    assert counts["PUT directories/tcdirectories/{id}?operation=move"] == 1


def test_commands_take_a_list_and_report_each_device(imi_server, imi):
    lab = imi_server
    online = populate(lab, 2)
    gone = lab.add_device("00:e0:c5:ff:00:01", "gone-tc", offline=True)
    body = [{"id": d.id, "type": "tc"} for d in (*online, gone)] + [{"id": "999999", "type": "tc"}]
    # pyimi sends one device per command: use its session (cookie header) for the list request
    answer = imi.make_request(method="post", data=body, end_of_url="thinclients?command=reboot")
    states = {e["id"]: (e["state"], e["message"]) for e in answer["CommandExecList"]}
    assert states[online[0].id] == ("SUCCESS", "OK") and states[online[1].id] == ("SUCCESS", "OK")
    assert states[gone.id] == ("FAILED", "Thin client is not reachable")
    assert states["999999"][0] == "FAILED"
    assert lab.requests["POST thinclients?command=reboot"] == 1


def test_login_cookie_expiry_and_tls(imi_server):
    lab = imi_server
    with pytest.raises(pyimi.IMIAuthError):
        pyimi.IMI(server="127.0.0.1", port=lab.port, user=lab.username, password="wrong")
    session = requests.Session()
    base = f"https://127.0.0.1:{lab.port}/umsapi/v3/"
    ca = lab.ca_file  # our lab CA: the certificate checks out (per request: REQUESTS_CA_BUNDLE beats Session.verify)
    assert session.get(base + "thinclients", verify=ca).status_code == 401
    login = session.post(base + "login", auth=(lab.username, lab.password), verify=ca)
    assert login.status_code == 200 and login.json()["message"] == f"JSESSIONID={session.cookies['JSESSIONID']}"
    assert session.get(base + "thinclients", verify=ca).status_code == 200
    lab.expire_sessions()
    assert session.get(base + "thinclients", verify=ca).status_code == 401
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(base + "thinclients", timeout=5)  # the system store does not know the lab CA
