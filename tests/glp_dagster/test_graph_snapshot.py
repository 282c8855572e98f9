"""A snapshot of the Dagster graph: every asset's key, deps, code version, group, kinds and partitioning, and every
check's name, target and blocking flag, for the default settings and for a sharded store. A change of code layout
must leave it byte-identical (so nothing recomputes); a deliberate change of the graph regenerates it with
`GLP_UPDATE_GRAPH_SNAPSHOT=1 python -m pytest tests/glp_dagster/test_graph_snapshot.py` and shows in the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SNAPSHOTS = Path(__file__).parent / "snapshots"
CASES = {"default": {}, "sharded": {"store": {"shards": 2}}}


def graph_snapshot(overrides: dict) -> dict:
    from glp.config import load_settings
    from glp_dagster.definitions import build_definitions

    defs = build_definitions(load_settings(**overrides))
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "code_version": node.code_version,
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitioned": node.partitions_def is not None,
            "executable": node.is_executable,
            "automation": type(node.automation_condition).__name__ if node.automation_condition else None,
        }
    checks = {}
    for ck in sorted(graph.asset_check_keys, key=lambda c: (c.asset_key.to_user_string(), c.name)):
        spec = graph.get_check_spec(ck)
        checks[f"{ck.asset_key.to_user_string()}:{ck.name}"] = {"blocking": bool(spec.blocking)}
    return {"assets": assets, "checks": checks}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_dagster_graph_matches_its_snapshot(case, monkeypatch):
    update = os.environ.get("GLP_UPDATE_GRAPH_SNAPSHOT") == "1"  # read before the GLP_* variables are cleared
    for var in [v for v in os.environ if v.startswith("GLP_")]:
        monkeypatch.delenv(var)
    got = graph_snapshot(CASES[case])
    path = SNAPSHOTS / f"graph_{case}.json"
    if update:
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.is_file(), f"no snapshot {path}: write it with GLP_UPDATE_GRAPH_SNAPSHOT=1"
    want = json.loads(path.read_text())
    assert got["assets"].keys() == want["assets"].keys()
    for key in want["assets"]:
        assert got["assets"][key] == want["assets"][key], key
    assert got == want
