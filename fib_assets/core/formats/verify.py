"""Prove that a format variant decodes to exactly the canonical voxels, block by block."""

from __future__ import annotations

from dataclasses import dataclass, field

from fib_assets.core.formats.base import CorruptChunkError, VolumeSource, block_checksum
from fib_assets.core.geometry import BlockPlan


@dataclass(frozen=True)
class Verification:
    n_blocks: int
    mismatched: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.mismatched and not self.errors


def verify_same_voxels(
    reference: VolumeSource, candidate: VolumeSource, *, block_shape: tuple[int, int, int]
) -> Verification:
    """Compare the block checksum (:func:`base.block_checksum`, XXH3-128) of every block of
    ``candidate`` with the same block of ``reference``; ``checksums`` records the candidate's.

    Memory is bounded by two blocks. Shape/dtype differences fail at once; corrupt chunks are
    recorded with their message (file and chunk index), never counted as equal.
    """
    ri, ci = reference.info, candidate.info
    if ri.shape != ci.shape or ri.dtype != ci.dtype:
        return Verification(
            0, errors=[f"shape/dtype {ci.shape}/{ci.dtype} != canonical {ri.shape}/{ri.dtype}"]
        )
    plan = BlockPlan(ri.shape, block_shape)
    mismatched: list[str] = []
    errors: list[str] = []
    sums: dict[str, str] = {}
    for block in plan.blocks():
        want = block_checksum(reference.read(block.write_roi))
        try:
            got_arr = candidate.read(block.write_roi)
        except CorruptChunkError as exc:
            errors.append(str(exc))
            continue
        got = block_checksum(got_arr)
        sums[block.block_id] = got
        if got != want:
            mismatched.append(block.block_id)
    return Verification(len(plan), mismatched, errors, sums)
