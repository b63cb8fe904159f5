"""The code location loads, validates and keeps the asset graph we reviewed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from fib_assets.definitions import defs

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("asset_graph.snapshot.json")


def graph_snapshot() -> dict:
    """Asset keys, deps, groups, owners, kinds, partitions, checks, sensors: what a rename or a
    rewiring would change."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "owners": sorted(node.owners),
            "kinds": sorted(node.kinds),
            "partitions": type(node.partitions_def).__name__ if node.partitions_def else None,
            # derived from source text (fib_assets.core.provenance.code_version): only presence
            "has_code_version": bool(node.code_version),
            "checks": sorted(
                f"{ck.name}{' (blocking)' if graph.get_check_spec(ck).blocking else ''}"
                for ck in graph.asset_check_keys
                if ck.asset_key == key
            ),
            "has_description": bool(node.description),
        }
    return {
        "assets": assets,
        "sensors": sorted(s.name for s in defs.sensors or []),
        "schedules": sorted(s.name for s in defs.schedules or []),
        "resources": sorted((defs.resources or {}).keys()),
    }


def test_asset_graph_matches_snapshot():
    snap = graph_snapshot()
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert snap == expected, "asset graph changed: review, then rerun with UPDATE_SNAPSHOT=1"


def test_definitions_load_with_all_resources():
    # a fresh instance: loading consults the current instance, and a test elsewhere
    # in the suite can leave a stale one behind
    with dg.instance_for_test():
        dg.Definitions.validate_loadable(defs)


def test_dagster_cli_validates_the_workspace():
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr
