"""Resumable blockwise execution with durable per-block "done" markers.

A block is marked done only after its function returned (the function is responsible for
writing *and verifying* its output); an exception leaves no marker, so a rerun redoes exactly
the blocks that did not finish. Markers are tied to a plan fingerprint: a different plan
(shape, chunking, source) never reuses markers of another.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fib_assets.core.geometry import Block, BlockPlan


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj`` (a plan, config ...)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


class BlockLedger:
    """Durable record of finished blocks: one small JSON file per block under ``directory``."""

    def __init__(self, directory: Path, plan_fingerprint: str, *, prefix: str = "") -> None:
        self.directory = Path(directory) / plan_fingerprint[:16]
        self.plan_fingerprint = plan_fingerprint
        self.prefix = prefix  # separates stages of one plan (e.g. pyramid levels)

    def _marker(self, block_id: str) -> Path:
        return self.directory / f"{self.prefix}{block_id}.done.json"

    def is_done(self, block_id: str) -> bool:
        return self._marker(block_id).exists()

    def info(self, block_id: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._marker(block_id).read_text())
        return result

    def mark_done(self, block_id: str, info: dict[str, Any]) -> None:
        atomic_write_json(self._marker(block_id), {"block_id": block_id, **info})

    def done_ids(self) -> set[str]:
        if not self.directory.exists():
            return set()
        return {
            p.name.removesuffix(".done.json").removeprefix(self.prefix)
            for p in self.directory.glob(f"{self.prefix}*.done.json")
        }


def run_blocks(
    blocks: Iterable[Block],
    fn: Callable[[Block], dict[str, Any]],
    ledger: BlockLedger,
    *,
    total: int | None = None,
    progress: bool = False,
    desc: str = "blocks",
) -> dict[str, dict[str, Any]]:
    """Run ``fn`` on every block not yet done; return ``{block_id: info}`` for all blocks.

    ``fn`` must write and verify its block and return JSON-serialisable info (e.g. a checksum).
    Serial by design: the unit of parallelism in fib_assets is the region partition.
    """
    results: dict[str, dict[str, Any]] = {}
    for block in tqdm(list(blocks), total=total, desc=desc, disable=not progress, unit="block"):
        if ledger.is_done(block.block_id):
            results[block.block_id] = ledger.info(block.block_id)
            continue
        info = fn(block)
        ledger.mark_done(block.block_id, info)
        results[block.block_id] = {"block_id": block.block_id, **info}
    return results


def run_plan(
    plan: BlockPlan,
    fn: Callable[[Block], dict[str, Any]],
    ledger: BlockLedger,
    *,
    progress: bool = False,
    desc: str = "blocks",
) -> dict[str, dict[str, Any]]:
    return run_blocks(plan.blocks(), fn, ledger, total=len(plan), progress=progress, desc=desc)
