"""One conformance suite for every format module (zarr-python's StoreTests pattern).

A format's test module subclasses :class:`FormatConformance`, sets ``module`` and implements
``independent_read`` (the format's reference library, never our reader) and ``damage_chunk``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
import pytest
import xxhash

from fib_assets.core.formats.base import (
    ArraySource,
    CorruptChunkError,
    WriteResult,
    checksum_matches,
    ledger_dir,
)
from fib_assets.core.geometry import BlockPlan, Roi, VoxelSize

VOXEL = VoxelSize(8.0, 4.0, 4.0)

SHAPES = {
    "divisible": (16, 32, 32),
    "non-divisible": (13, 29, 35),
    "thin": (1, 17, 9),
}


def em_like(shape, dtype, seed=0) -> np.ndarray:
    """Deterministic, compressible but not trivial data (so codecs do real work)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    base = 100 + 60 * np.sin(x / 3.0) * np.cos(y / 5.0) + 20 * np.sin(z / 2.0)
    noisy = base + rng.normal(0, 8, size=shape)
    if np.dtype(dtype) == np.uint16:
        noisy = noisy * 200
    info = np.iinfo(dtype)
    return np.clip(noisy, info.min, info.max).astype(dtype)


class FormatConformance:
    module: ClassVar[ModuleType]
    chunks: ClassVar[tuple[int, int, int]] = (8, 8, 8)

    # --- what each format's test supplies -------------------------------------------------
    def independent_read(self, path: Path) -> np.ndarray:
        """Read the whole volume with the format's reference library (z, y, x)."""
        raise NotImplementedError

    def damage_chunk(self, path: Path) -> None:
        """Corrupt (flip bytes of / truncate) the stored data of one chunk."""
        raise NotImplementedError

    def plan_options(self) -> dict[str, object]:
        """Extra ``plan_write`` options the format's tests always pass (e.g. TIFF's layout)."""
        return {}

    # --- helpers ---------------------------------------------------------------------------
    def target(self, tmp_path: Path, name: str = "vol") -> Path:
        return tmp_path / f"{name}{self.module.SUFFIX}"

    def write(self, tmp_path, data, name="vol", **kw) -> WriteResult:
        src = ArraySource(data, VOXEL)
        plan = self.module.plan_write(
            self.target(tmp_path, name), src.info, chunks=self.chunks, **kw
        )
        return self.module.write_volume(plan, src)

    # --- the suite -------------------------------------------------------------------------
    @pytest.mark.parametrize("dtype", ["uint8", "uint16"])
    @pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
    def test_round_trip_matches_independent_reader(self, tmp_path, shape, dtype):
        data = em_like(shape, dtype)
        res = self.write(tmp_path, data)
        np.testing.assert_array_equal(self.independent_read(Path(res.path)), data)
        vol = self.module.open_volume(res.path)
        try:
            assert vol.info.shape == shape
            assert vol.info.dtype == dtype
            assert vol.info.voxel_size == VOXEL
            np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), shape)), data)
        finally:
            vol.close()
        assert res.bytes_on_disk > 0 and res.file_count >= 1

    def test_partial_reads_at_odd_offsets(self, tmp_path):
        data = em_like(SHAPES["non-divisible"], "uint8", seed=1)
        res = self.write(tmp_path, data)
        vol = self.module.open_volume(res.path)
        try:
            for roi in [
                Roi((3, 5, 7), (5, 11, 13)),
                Roi((0, 28, 0), (13, 1, 35)),  # one XZ plane
                Roi((12, 0, 34), (1, 29, 1)),  # a line at the far corner
                Roi((7, 9, 11), (1, 1, 1)),
            ]:
                np.testing.assert_array_equal(
                    vol.read(roi), data[roi.to_slices()], err_msg=str(roi)
                )
        finally:
            vol.close()

    def test_out_of_bounds_roi_is_an_error(self, tmp_path):
        res = self.write(tmp_path, em_like((8, 8, 8), "uint8"))
        vol = self.module.open_volume(res.path)
        try:
            with pytest.raises(ValueError, match="outside"):
                vol.read(Roi((4, 0, 0), (8, 8, 8)))
        finally:
            vol.close()

    def test_missing_path_names_it(self, tmp_path):
        missing = self.target(tmp_path, "nope")
        with pytest.raises(FileNotFoundError, match="nope"):
            self.module.open_volume(missing)

    def test_corrupt_chunk_is_reported_never_zeros(self, tmp_path):
        data = em_like((16, 16, 16), "uint8", seed=2)
        res = self.write(tmp_path, data)
        self.damage_chunk(Path(res.path))
        vol = self.module.open_volume(res.path)
        try:
            with pytest.raises(CorruptChunkError) as err:
                vol.read(Roi((0, 0, 0), (16, 16, 16)))
        finally:
            vol.close()
        assert Path(res.path).name in str(err.value) or res.path in err.value.path

    def test_failed_rewrite_keeps_previous_variant_and_resumes(self, tmp_path, monkeypatch):
        old = em_like((16, 16, 16), "uint8", seed=3)
        first = self.write(tmp_path, old)
        new = em_like((16, 16, 16), "uint8", seed=4)

        class Failing(ArraySource):
            calls = 0

            def read(self, roi):
                Failing.calls += 1
                if Failing.calls == 3:
                    raise OSError("source went away")
                return super().read(roi)

        src = Failing(new, VOXEL)
        plan = self.module.plan_write(
            self.target(tmp_path), src.info, chunks=self.chunks, block_shape=(8, 8, 8)
        )
        with pytest.raises(OSError, match="source went away"):
            self.module.write_volume(plan, src)
        # the earlier variant is untouched and readable
        np.testing.assert_array_equal(self.independent_read(Path(first.path)), old)

        class Counting(ArraySource):
            calls = 0

            def read(self, roi):
                Counting.calls += 1
                return super().read(roi)

        again = self.module.write_volume(plan, Counting(new, VOXEL))
        assert Counting.calls == 8 - 2  # the two finished blocks were not redone
        np.testing.assert_array_equal(self.independent_read(Path(again.path)), new)

    def test_resume_from_markers_that_recorded_sha256(self, tmp_path):
        """Done markers written before block checksums named their algorithm (a bare
        ``"sha256"``) are still honoured on resume, and reported as ``sha256:<hex>``."""
        data = em_like((16, 16, 16), "uint8", seed=6)
        info = ArraySource(data, VOXEL).info
        plan = self.module.plan_write(
            self.target(tmp_path),
            info,
            chunks=self.chunks,
            block_shape=(8, 8, 8),
            **self.plan_options(),
        )
        rois = {b.block_id: b.write_roi for b in BlockPlan(data.shape, plan.block_shape).blocks()}

        class FailingLast(ArraySource):  # (TIFF's blocks are whole slabs: 2 here, not 8)
            calls = 0

            def read(self, roi):
                FailingLast.calls += 1
                if FailingLast.calls == len(rois):
                    raise OSError("source went away")
                return super().read(roi)

        with pytest.raises(OSError, match="source went away"):
            self.module.write_volume(plan, FailingLast(data, VOXEL))
        markers = sorted(ledger_dir(plan).rglob("*.done.json"))
        assert len(markers) == len(rois) - 1
        legacy = {}
        for marker in markers:  # rewrite them as the previous version recorded them
            info = json.loads(marker.read_text())
            assert info.pop("checksum").startswith("xxh3_128:")
            block = data[rois[info["block_id"]].to_slices()]
            info["sha256"] = hashlib.sha256(np.ascontiguousarray(block)).hexdigest()
            legacy[info["block_id"]] = "sha256:" + info["sha256"]
            marker.write_text(json.dumps(info))
        again = self.module.write_volume(plan, ArraySource(data, VOXEL))
        np.testing.assert_array_equal(self.independent_read(Path(again.path)), data)
        for block_id, roi in rois.items():
            block = np.ascontiguousarray(data[roi.to_slices()])
            want = legacy.get(block_id, "xxh3_128:" + xxhash.xxh3_128_hexdigest(block))
            assert again.block_checksums[block_id] == want
            assert checksum_matches(block, again.block_checksums[block_id])

    def test_write_touches_nothing_but_its_target(self, tmp_path, monkeypatch):
        """No cwd-relative writes (stray chunk files once landed in the repo root as ``w/``)
        and no staging, marker or temp files left beside the published variant."""
        cwd, out = tmp_path / "cwd", tmp_path / "out"
        cwd.mkdir()
        out.mkdir()
        monkeypatch.chdir(cwd)
        data = em_like((16, 16, 16), "uint8", seed=5)
        src = ArraySource(data, VOXEL)
        target = self.target(out)
        plan = self.module.plan_write(target, src.info, chunks=self.chunks, block_shape=(8, 8, 8))
        self.module.write_volume(plan, src)
        assert list(cwd.iterdir()) == []
        assert [p.name for p in out.iterdir()] == [target.name]

    def test_plan_is_pure_and_serialisable(self, tmp_path):
        src = ArraySource(em_like((8, 8, 8), "uint8"), VOXEL)
        plan = self.module.plan_write(self.target(tmp_path), src.info, chunks=self.chunks)
        assert not self.target(tmp_path).exists()
        d = plan.to_dict()
        assert d["format"] and d["source"]["shape"] == [8, 8, 8]
