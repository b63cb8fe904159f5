"""TIFF format, both layouts: the shared conformance suite plus TIFF-specific layout checks.

The independent reader is tifffile (plus json for ``volume.json``), never our reader.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xxhash

from fib_assets.core.formats import format_of
from fib_assets.core.formats import open_volume as open_any
from fib_assets.core.formats import tiff as tiffmod
from fib_assets.core.formats.base import (
    ArraySource,
    CorruptChunkError,
    ledger_dir,
    staging_path,
)
from fib_assets.core.geometry import Roi
from fib_assets_tests.core.formats.conformance import VOXEL, FormatConformance, em_like

GARBAGE = b"\xde\xad\xbe\xef"  # not a zlib/lzma/zstd header


def _overwrite_segment(file: Path, page_index: int, segment: int) -> None:
    """Overwrite the stored bytes of one tile of one page with garbage (``page.dataoffsets``)."""
    with tifffile.TiffFile(file) as tif:
        page = tif.pages[page_index]
        offset, count = page.dataoffsets[segment], page.databytecounts[segment]
    with open(file, "r+b") as fh:
        fh.seek(offset)
        fh.write((GARBAGE * count)[:count])


class _TiffConformance(FormatConformance):
    module = tiffmod
    layout: str

    def write(self, tmp_path, data, name="vol", **kw):
        return super().write(tmp_path, data, name, layout=self.layout, **kw)

    def plan_options(self):
        return {"layout": self.layout}

    def test_failed_rewrite_keeps_previous_variant_and_resumes(self, tmp_path, monkeypatch):
        """Overrides the suite's test: TIFF blocks are whole z-slabs (a page is written in one
        piece), so ``block_shape=(8, 8, 8)`` on a 16³ volume gives 2 slabs, not 8 blocks, and
        the suite's third source read would never happen. ``(2, 8, 8)`` gives 8 slabs of
        (2, 16, 16); everything else (fail on read 3, resume redoes 6) is the suite's test."""
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
            self.target(tmp_path),
            src.info,
            chunks=self.chunks,
            block_shape=(2, 8, 8),
            layout=self.layout,
        )
        assert plan.block_shape == (2, 16, 16)  # only z of a given block_shape is used
        with pytest.raises(OSError, match="source went away"):
            self.module.write_volume(plan, src)
        np.testing.assert_array_equal(self.independent_read(Path(first.path)), old)

        class Counting(ArraySource):
            calls = 0

            def read(self, roi):
                Counting.calls += 1
                return super().read(roi)

        again = self.module.write_volume(plan, Counting(new, VOXEL))
        assert Counting.calls == 8 - 2  # the two finished slabs were not redone
        np.testing.assert_array_equal(self.independent_read(Path(again.path)), new)


class TestTiffBigtiff(_TiffConformance):
    layout = "bigtiff"

    def independent_read(self, path: Path) -> np.ndarray:
        with tifffile.TiffFile(path) as tif:
            return np.stack([page.asarray() for page in tif.pages])

    def damage_chunk(self, path: Path) -> None:
        _overwrite_segment(path, page_index=5, segment=0)


class TestTiffSlices(_TiffConformance):
    layout = "slices"

    def independent_read(self, path: Path) -> np.ndarray:
        meta = json.loads((path / "volume.json").read_text())["fib_assets"]
        files = [path / f"z{z:06d}.tif" for z in range(meta["shape"][0])]
        return np.stack([tifffile.imread(f) for f in files])

    def damage_chunk(self, path: Path) -> None:
        _overwrite_segment(path / "z000005.tif", page_index=0, segment=0)


# --- layout ----------------------------------------------------------------------------------


def _write(tmp_path: Path, data: np.ndarray, name: str = "vol", **kw):
    src = ArraySource(data, VOXEL)
    plan = tiffmod.plan_write(tmp_path / f"{name}.tiff", src.info, **kw)
    return tiffmod.write_volume(plan, src)


def test_bigtiff_is_a_tiled_multipage_file_with_resolution_and_ome_metadata(tmp_path):
    data = em_like((6, 40, 50), "uint16")
    res = _write(tmp_path, data, chunks=(2, 32, 20))
    assert res.file_count == 1 and res.plan.chunks == (1, 32, 32)
    with tifffile.TiffFile(res.path) as tif:
        assert tif.is_bigtiff and len(tif.pages) == 6
        for page in tif.pages:
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (32, 32)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            # 4 nm pixels = 2.5e6 pixels per cm
            assert page.tags["XResolution"].value == (2_500_000, 1)
            assert page.tags["YResolution"].value == (2_500_000, 1)
        assert tif.is_ome
        series = tif.series[0]
        assert series.shape == (6, 40, 50) and series.axes == "ZYX"
        np.testing.assert_array_equal(series.asarray(), data)
        pixels = tif.ome_metadata
        assert 'PhysicalSizeZ="8.0"' in pixels and 'PhysicalSizeZUnit="nm"' in pixels
        ours = json.loads(tif.pages[0].tags[65000].value)["fib_assets"]
        assert ours["voxel_size_nm"] == {"z": 8.0, "y": 4.0, "x": 4.0}
        assert ours["shape"] == [6, 40, 50] and ours["layout"] == "bigtiff"


def test_slices_layout_is_one_tiff_per_z_plus_volume_json(tmp_path):
    data = em_like((5, 20, 30), "uint8")
    res = _write(tmp_path, data, layout="slices", chunks=(2, 16, 16))
    root = Path(res.path)
    assert root.is_dir() and root.name == "vol.tiff"
    names = sorted(p.name for p in root.iterdir())
    assert names == ["volume.json"] + [f"z{z:06d}.tif" for z in range(5)]
    assert res.file_count == 6
    meta = json.loads((root / "volume.json").read_text())["fib_assets"]
    assert meta["shape"] == [5, 20, 30] and meta["dtype"] == "uint8"
    assert meta["voxel_size_nm"] == {"z": 8.0, "y": 4.0, "x": 4.0} and meta["layout"] == "slices"
    with tifffile.TiffFile(root / "z000003.tif") as tif:
        assert len(tif.pages) == 1 and tif.pages[0].is_tiled
        assert tif.pages[0].tags["XResolution"].value == (2_500_000, 1)
        np.testing.assert_array_equal(tif.asarray(), data[3])


@pytest.mark.parametrize("layout", ["bigtiff", "slices"])
@pytest.mark.parametrize("compression", ["zlib", "lzma", None])
def test_compressions_round_trip(tmp_path, layout, compression):
    data = em_like((3, 33, 17), "uint16", seed=6)
    res = _write(tmp_path, data, layout=layout, compression=compression, chunks=(1, 16, 16))
    with tiffmod.open_volume(res.path) as vol:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), data.shape)), data)


def test_plan_blocks_are_z_slabs_bounded_in_memory(tmp_path):
    info = ArraySource(np.zeros((100, 2048, 2048), np.uint16), VOXEL).info
    plan = tiffmod.plan_write(tmp_path / "big.tiff", info, chunks=(64, 256, 256))
    # 64 slices of 8 MiB would be 512 MiB: the slab shrinks to 64 MiB
    assert plan.block_shape == (8, 2048, 2048)
    assert plan.chunks == (1, 256, 256)
    small = tiffmod.plan_write(tmp_path / "s.tiff", info, chunks=(4, 100, 8), block_shape=(3, 5, 5))
    assert small.block_shape == (3, 2048, 2048)
    assert small.options["tile"] == [112, 16]


def test_block_checksums_are_xxh3_128_of_c_order_slabs(tmp_path):
    data = em_like((6, 16, 16), "uint8", seed=7)
    res = _write(tmp_path, data, chunks=(4, 16, 16))
    assert set(res.block_checksums) == {"0_0_0", "1_0_0"}
    want = "xxh3_128:" + xxhash.xxh3_128_hexdigest(np.ascontiguousarray(data[4:6]))
    assert res.block_checksums["1_0_0"] == want
    assert set(res.library_versions) >= {"tifffile", "numpy"}


@pytest.mark.parametrize("layout", ["bigtiff", "slices"])
def test_data_verification_and_fsync_options(tmp_path, layout):
    data = em_like((5, 20, 20), "uint16", seed=8)
    res = _write(tmp_path, data, layout=layout, chunks=(2, 16, 16), verify="data", fsync=True)
    with tiffmod.open_volume(res.path) as vol:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), data.shape)), data)


def test_bigtiff_resume_appends_after_a_slab_that_failed_half_way(tmp_path, monkeypatch):
    """A slab whose pages were partly written when the write failed is cut off on resume."""
    data = em_like((8, 16, 16), "uint8", seed=9)
    src = ArraySource(data, VOXEL)
    plan = tiffmod.plan_write(tmp_path / "h.tiff", src.info, chunks=(2, 16, 16))
    real_write = tifffile.TiffWriter.write
    calls = {"n": 0}

    def flaky_write(self, data, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # third slab: one page lands, then the "disk" fails
            real_write(self, data[:1], **kw)
            self.filehandle.flush()
            raise OSError("disk went away")
        return real_write(self, data, **kw)

    monkeypatch.setattr(tifffile.TiffWriter, "write", flaky_write)
    with pytest.raises(OSError, match="disk went away"):
        tiffmod.write_volume(plan, src)
    monkeypatch.setattr(tifffile.TiffWriter, "write", real_write)
    with tifffile.TiffFile(staging_path(plan)) as tif:
        assert len(tif.pages) == 5  # 2 done slabs + 1 page of the failed one

    class Counting(ArraySource):
        rois: list = []

        def read(self, roi):
            Counting.rois.append(roi)
            return super().read(roi)

    res = tiffmod.write_volume(plan, Counting(data, VOXEL))
    assert [r.offset[0] for r in Counting.rois] == [4, 6]
    with tifffile.TiffFile(res.path) as tif:
        assert len(tif.pages) == 8 and tif.is_ome
        np.testing.assert_array_equal(tif.series[0].asarray(), data)
    assert not staging_path(plan).exists() and not ledger_dir(plan).exists()


@pytest.mark.parametrize("layout", ["bigtiff", "slices"])
def test_resume_starts_over_when_a_done_slab_changed(tmp_path, layout):
    data = em_like((8, 16, 16), "uint8", seed=10)

    class FailOnThird(ArraySource):
        calls = 0

        def read(self, roi):
            FailOnThird.calls += 1
            if FailOnThird.calls == 3:
                raise OSError("source went away")
            return super().read(roi)

    src = FailOnThird(data, VOXEL)
    plan = tiffmod.plan_write(tmp_path / "c.tiff", src.info, chunks=(2, 16, 16), layout=layout)
    with pytest.raises(OSError):
        tiffmod.write_volume(plan, src)
    staging = staging_path(plan)
    damaged = staging / "z000001.tif" if layout == "slices" else staging
    _overwrite_segment(damaged, page_index=0 if layout == "slices" else 1, segment=0)

    class Counting(ArraySource):
        calls = 0

        def read(self, roi):
            Counting.calls += 1
            return super().read(roi)

    res = tiffmod.write_volume(plan, Counting(data, VOXEL))
    assert Counting.calls == 4  # not trusted: every slab again
    with tiffmod.open_volume(res.path) as vol:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), data.shape)), data)


def test_corrupt_tile_index_is_z_tile_row_tile_column(tmp_path):
    data = em_like((4, 40, 40), "uint8", seed=11)
    res = _write(tmp_path, data, chunks=(1, 16, 16))
    _overwrite_segment(Path(res.path), page_index=2, segment=4)  # 3 tiles across: row 1, col 1
    with tiffmod.open_volume(res.path) as vol:
        # tiles the ROI does not touch are not decoded
        np.testing.assert_array_equal(vol.read(Roi((2, 0, 0), (1, 16, 40))), data[2:3, :16])
        with pytest.raises(CorruptChunkError) as err:
            vol.read(Roi((0, 10, 10), (4, 10, 10)))
    assert err.value.chunk_index == (2, 1, 1) and err.value.path == res.path


def test_missing_slice_and_truncated_bigtiff_are_reported(tmp_path):
    data = em_like((4, 16, 16), "uint8")
    slices = _write(tmp_path, data, name="s", layout="slices", chunks=(1, 16, 16))
    (Path(slices.path) / "z000002.tif").unlink()
    with tiffmod.open_volume(slices.path) as vol:
        with pytest.raises(CorruptChunkError, match="missing") as err:
            vol.read(Roi((0, 0, 0), (4, 16, 16)))
        assert err.value.chunk_index == (2,)
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), (2, 16, 16))), data[:2])
    big = _write(tmp_path, data, name="b", chunks=(1, 16, 16))
    with tifffile.TiffFile(big.path) as tif:
        end = tif.pages[3].dataoffsets[0] + 2  # cut inside the last page's tile
    with open(big.path, "r+b") as fh:
        fh.truncate(end)
    with tiffmod.open_volume(big.path) as vol, pytest.raises(CorruptChunkError) as err:
        vol.read(Roi((3, 0, 0), (1, 16, 16)))
    assert err.value.chunk_index[0] == 3


def test_layout_switch_replaces_the_previous_variant(tmp_path):
    a, b = em_like((3, 16, 16), "uint8", seed=1), em_like((3, 16, 16), "uint8", seed=2)
    _write(tmp_path, a, layout="slices", chunks=(1, 16, 16))
    res = _write(tmp_path, b, layout="bigtiff", chunks=(1, 16, 16))
    assert Path(res.path).is_file()
    res = _write(tmp_path, a, layout="slices", chunks=(1, 16, 16))
    assert Path(res.path).is_dir()
    with tiffmod.open_volume(res.path) as vol:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), a.shape)), a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.tiff"]


def test_same_plan_writes_identical_bytes(tmp_path):
    data = em_like((3, 16, 16), "uint8")
    first = Path(_write(tmp_path, data, name="a").path).read_bytes()
    again = Path(_write(tmp_path, data, name="a").path).read_bytes()
    assert first == again


def test_dispatch_by_suffix_opens_both_layouts(tmp_path):
    data = em_like((2, 16, 16), "uint8")
    for name, layout in [("b", "bigtiff"), ("s", "slices")]:
        res = _write(tmp_path, data, name=name, layout=layout, chunks=(1, 16, 16))
        assert format_of(res.path) == "tiff"
        vol = open_any(res.path)
        try:
            assert vol.info.voxel_size == VOXEL and vol.path == res.path
        finally:
            vol.close()


def test_foreign_tiff_without_our_description_is_refused(tmp_path):
    path = tmp_path / "foreign.tiff"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="65000"):
        tiffmod.open_volume(path)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"layout": "stack"}, "layout"),
        ({"compression": "jpeg"}, "compression"),
        ({"compression": "zlib", "compression_level": 11}, "level"),
        ({"chunks": (1, 0, 16)}, "chunks"),
        ({"verify": "maybe"}, "verify"),
    ],
    ids=["layout", "codec", "level", "chunks", "verify"],
)
def test_bad_plans_name_the_bad_value(tmp_path, kw, match):
    info = ArraySource(em_like((2, 8, 8), "uint8"), VOXEL).info
    with pytest.raises(ValueError, match=match):
        tiffmod.plan_write(tmp_path / "bad.tiff", info, **kw)
    with pytest.raises(ValueError, match=r"\.tiff"):
        tiffmod.plan_write(tmp_path / "bad.tif", info)


KILLED_WRITER = """
import os, signal, sys
from fib_assets.core.formats import tiff
from fib_assets.core.formats.base import ArraySource
from fib_assets_tests.core.formats.conformance import VOXEL, em_like

class KilledOnFourthRead(ArraySource):
    calls = 0

    def read(self, roi):
        KilledOnFourthRead.calls += 1
        if KilledOnFourthRead.calls == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, TiffWriter never closed
        return super().read(roi)

src = KilledOnFourthRead(em_like((16, 32, 32), "uint16", seed=1), VOXEL)
plan = tiff.plan_write(sys.argv[1], src.info, chunks=(4, 16, 16), layout=sys.argv[2])
tiff.write_volume(plan, src)
"""


@pytest.mark.parametrize("layout", ["bigtiff", "slices"])
def test_resume_after_the_writer_process_was_killed(tmp_path, layout):
    path = tmp_path / "killed.tiff"
    cwd = Path(__file__).resolve().parents[3]
    argv = [sys.executable, "-c", KILLED_WRITER, str(path), layout]
    proc = subprocess.run(argv, cwd=cwd, timeout=120)
    assert proc.returncode == -signal.SIGKILL

    data = em_like((16, 32, 32), "uint16", seed=1)

    class Counting(ArraySource):
        calls = 0

        def read(self, roi):
            Counting.calls += 1
            return super().read(roi)

    src = Counting(data, VOXEL)
    plan = tiffmod.plan_write(path, src.info, chunks=(4, 16, 16), layout=layout)
    assert staging_path(plan).exists() and not path.exists()
    res = tiffmod.write_volume(plan, src)
    assert Counting.calls == 1  # three of four slabs were done (and re-verified) before the kill
    with tiffmod.open_volume(res.path) as vol:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), data.shape)), data)
