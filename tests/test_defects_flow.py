"""The Prefect flow around the defect collection (Prefect's ephemeral mode: slow, so one test)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import ROOT
from tests.test_defects_helpers import demo_inventory, rehearse

SCRIPT = textwrap.dedent("""
    import json, sys
    from flows.defects import defects
    out = defects(ledger_url=sys.argv[1])
    again = defects(ledger_url=sys.argv[1], probe=False)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["bigbang-defects"])))
    print(json.dumps({"first": out, "again": again, "artifacts": [a.data for a in arts]}, default=str))
""")


def test_defect_flow_engine(tmp_path, bb_env):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rehearse(demo_inventory(tmp_path), url).close()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, url], env={**bb_env, "PREFECT_LOGGING_LEVEL": "WARNING"},
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    first, again = out["first"], out["again"]
    assert first["collection"]["filed"]["created"] == 5 and first["collection"]["errors"] == []
    assert again["collection"]["filed"]["created"] == 0
    assert first["report"].endswith("defects.html") and "<svg" in open(first["report"], encoding="utf-8").read()
    assert out["artifacts"] and all(a.startswith("# Defects") for a in out["artifacts"])
    assert "Most urgent open defects" in out["artifacts"][0]
