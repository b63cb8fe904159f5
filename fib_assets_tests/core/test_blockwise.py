import pytest

from fib_assets.core.blockwise import BlockLedger, atomic_write_bytes, fingerprint, run_plan
from fib_assets.core.geometry import BlockPlan


def test_failed_block_is_never_marked_done_and_rerun_skips_done_blocks(tmp_path):
    plan = BlockPlan((4, 4, 4), (2, 2, 2))
    ledger = BlockLedger(tmp_path, fingerprint(plan.to_dict()))
    calls: list[str] = []

    def flaky(block):
        calls.append(block.block_id)
        if block.block_id == "1_0_1":
            raise OSError("disk full")
        return {"ok": True}

    with pytest.raises(OSError, match="disk full"):
        run_plan(plan, flaky, ledger)
    done = ledger.done_ids()
    assert "1_0_1" not in done
    assert done == set(calls[:-1])

    calls.clear()
    results = run_plan(plan, lambda b: calls.append(b.block_id) or {"ok": True}, ledger)
    # only the failed block and the ones never reached run again
    assert "0_0_0" not in calls and calls[0] == "1_0_1"
    assert len(results) == len(plan) == 8
    assert ledger.done_ids() == {b.block_id for b in plan.blocks()}


def test_markers_are_tied_to_the_plan(tmp_path):
    a = BlockLedger(tmp_path, fingerprint({"plan": 1}))
    b = BlockLedger(tmp_path, fingerprint({"plan": 2}))
    a.mark_done("0_0_0", {})
    assert a.is_done("0_0_0") and not b.is_done("0_0_0")
    c = BlockLedger(tmp_path, fingerprint({"plan": 1}), prefix="s1-")
    assert not c.is_done("0_0_0")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")

    import os

    def boom(*_a, **_k):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
