"""Labels layer without Dagster: class map, placing crops on the raw grid, the three importers
(Paintera, CellMap, TIFF), the inbox, revisions with their checks, and synthetic delivery."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorstore as ts
import tifffile
import yaml
import zarr
from PIL import Image

from fib_assets.core import labels
from fib_assets.core.formats.paintera import (
    export_paintera,
    open_label_group,
    write_paintera_labels,
)
from fib_assets.core.geometry import Roi, VoxelSize
from fib_assets.core.labels import (
    COSEM_CLASS_MAP,
    AnnotationSidecar,
    ClassMap,
    LabelImportError,
    LabelVolume,
    RawGrid,
    RevisionStore,
    place_crop,
)
from fib_assets_tests.core.formats.test_paintera import raw_container

GRID = RawGrid((32, 64, 64), VoxelSize(8.0, 8.0, 8.0))


def _volume(data, vox=(8.0, 8.0, 8.0), offset=(0.0, 0.0, 0.0), source="c.n5") -> LabelVolume:
    return LabelVolume(np.asarray(data), VoxelSize(*vox), source, "paintera", offset_nm=offset)


def _dense(shape=(8, 16, 16), ids=(35, 3, 4)) -> np.ndarray:
    out = np.full(shape, ids[0], dtype=np.uint64)
    out[:, : shape[1] // 2] = ids[1]
    out[: shape[0] // 2, : shape[1] // 2, : shape[2] // 2] = ids[2]
    return out


# --- class map -----------------------------------------------------------------------------


def test_cosem_class_map_ids_and_combined_classes():
    cm = COSEM_CLASS_MAP
    assert cm.classes[1] == "ecs" and cm.classes[2] == "pm" and cm.classes[35] == "cyto"
    assert cm.classes[34] == "ribo" and cm.classes[37] == "nuc"
    assert cm.ids_of("mito") == {3, 4, 5}
    assert cm.ids_of("golgi") == {6, 7}
    assert cm.ids_of("er") == set(range(16, 24))
    assert cm.ids_of("nucleus") == {*range(20, 30), 37}
    assert cm.ids_of("mt") == {30, 36}
    assert cm.ids_of("mito_lum") == {4}
    assert cm.unknown([0, 3, 38, 200]) == [38, 200]
    assert ClassMap.from_dict(json.loads(json.dumps(cm.to_dict()))) == cm
    lab = np.array([[[3, 4, 35]]])
    assert cm.mask(lab, "mito").tolist() == [[[True, True, False]]]
    with pytest.raises(KeyError, match="unknown class 'foo'"):
        cm.ids_of("foo")


def test_synthetic_class_ids_are_in_the_map():
    from fib_assets.core.acquisition.synthetic import CLASS_IDS

    for name, i in CLASS_IDS.items():
        assert COSEM_CLASS_MAP.classes[i] == name


@pytest.mark.parametrize(
    "classes, combined, problem",
    [
        ({0: "bg"}, {}, "1..255"),
        ({1: "a", 2: "a"}, {}, "unique"),
        ({1: "a"}, {"b": frozenset({2})}, "unknown ids"),
    ],
)
def test_invalid_class_maps(classes, combined, problem):
    with pytest.raises(ValueError, match=problem):
        ClassMap(classes, combined)


def test_class_map_from_file(tmp_path):
    f = tmp_path / "classes.yaml"
    f.write_text(yaml.safe_dump({"classes": {1: "bg", 2: "mito"}, "combined": {"all": [1, 2]}}))
    cm = ClassMap.from_file(f)
    assert cm.ids_of("all") == {1, 2} and cm.name(2) == "mito"


# --- placing crops on the raw grid -----------------------------------------------------------


def test_place_crop_at_raw_resolution():
    crop = place_crop(_volume(_dense(), offset=(16, 80, 40)), GRID, COSEM_CLASS_MAP, name="c1")
    assert crop.roi == Roi((2, 10, 5), (8, 16, 16))
    assert crop.factor == (1, 1, 1) and crop.data.dtype == np.uint8


@pytest.mark.parametrize(
    "alignment, offset", [("centre", (14.0, 78.0, 38.0)), ("corner", (16.0, 80.0, 40.0))]
)
def test_place_crop_at_twice_the_raw_resolution(alignment, offset):
    crop = place_crop(
        _volume(_dense((8, 16, 16)), vox=(4, 4, 4), offset=offset), GRID, COSEM_CLASS_MAP, name="c"
    )
    assert crop.roi == Roi((2, 10, 5), (4, 8, 8)) and crop.factor == (2, 2, 2)
    assert crop.alignment == alignment


@pytest.mark.parametrize(
    "volume, problem",
    [
        (_volume(_dense().astype(np.float32)), "wrong dtype float32"),
        (_volume(_dense()[0]), "wrong shape"),
        (_volume(_dense(), vox=(16, 16, 16)), "coarser than the raw"),
        (_volume(_dense(), vox=(3, 3, 3)), "nor an integer fraction"),
        (_volume(_dense((7, 16, 16)), vox=(4, 4, 4), offset=(-2, -2, -2)), "whole raw voxels"),
        (_volume(_dense(), offset=(4.0, 0.0, 0.0)), "not on the raw voxel grid"),
        (_volume(_dense(), offset=(8 * 30, 0, 0)), "crop outside the raw volume"),
        (_volume(_dense(ids=(35, 3, 99))), r"label ids outside the class map: 99 \(256 voxels\)"),
    ],
    ids=[
        "float",
        "2-d",
        "coarser",
        "fraction",
        "partial-voxels",
        "off-grid",
        "outside",
        "unknown-ids",
    ],
)
def test_bad_crops_are_named_errors(volume, problem):
    with pytest.raises(LabelImportError, match=problem) as err:
        place_crop(volume, GRID, COSEM_CLASS_MAP, name="c")
    assert err.value.container == "c.n5" and str(err.value).startswith("c.n5: ")


def test_sidecar_roi_is_an_assertion():
    vol = _volume(_dense(), offset=(16, 80, 40))
    with pytest.raises(LabelImportError, match="sidecar declares"):
        place_crop(vol, GRID, COSEM_CLASS_MAP, name="c", expect_roi=Roi((0, 0, 0), (8, 16, 16)))


# --- importers ----------------------------------------------------------------------------


def test_read_paintera_checks_max_id(tmp_path):
    lab = _dense()
    out = write_paintera_labels(tmp_path / "a.n5", lab, voxel_size=GRID.voxel_size, max_id=40)
    vol = labels.read_paintera(out)
    np.testing.assert_array_equal(vol.data, lab)
    assert vol.details["label_group"] == "volumes/labels/ground_truth"
    # a container claiming a smaller maxId than its labels is refused (Paintera would reuse ids)
    attrs = out / "volumes/labels/ground_truth/attributes.json"
    attrs.write_text(json.dumps({**json.loads(attrs.read_text()), "maxId": 5}))
    with pytest.raises(LabelImportError, match="maxId 5 .* smaller than its largest label 35"):
        labels.read_paintera(out)
    attrs.write_text(json.dumps({"painteraData": {"type": "label"}}))
    (out / "volumes/labels/ground_truth/data/attributes.json").write_text(
        json.dumps({"multiScale": True, "resolution": [8, 8, 8]})
    )
    with pytest.raises(LabelImportError, match="lacks the required attribute 'maxId'") as err:
        labels.read_paintera(out)
    assert err.value.container == str(out)


def _ngff(scale, translation):
    return {
        "multiscales": [
            {
                "version": "0.4",
                "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": scale},
                            {"type": "translation", "translation": translation},
                        ],
                    }
                ],
            }
        ]
    }


def _cellmap(
    tmp_path, masks: dict[str, np.ndarray], *, scale=(4, 4, 4), translation=(14, 78, 38)
) -> Path:
    path = tmp_path / "jrc_cell.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    crop = (
        root.require_group("recon-1")
        .require_group("labels")
        .require_group("groundtruth")
        .require_group("crop7")
    )
    for name, data in masks.items():
        g = crop.require_group(name)
        g.attrs.update(_ngff(list(scale), list(translation)))
        g.create_array("s0", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data
    return path


def test_cellmap_crop_from_class_masks(tmp_path):
    dense = _dense((8, 16, 16)).astype(np.uint8)
    masks = {
        "mito_mem": (dense == 3).astype(np.uint8),
        "mito_lum": (dense == 4).astype(np.uint8),
        "cyto": (dense == 35).astype(np.uint8),
        "mito": np.isin(dense, [3, 4]).astype(np.uint8),  # combined: ignored
    }
    path = _cellmap(tmp_path, masks)
    assert labels.find_cellmap_crops(path) == {"crop7": "recon-1/labels/groundtruth/crop7"}
    vol = labels.read_cellmap_crop(path, "crop7", COSEM_CLASS_MAP)
    np.testing.assert_array_equal(vol.data, dense)
    crop = place_crop(vol, GRID, COSEM_CLASS_MAP, name="crop7")
    assert crop.roi == Roi((2, 10, 5), (4, 8, 8)) and crop.factor == (2, 2, 2)


def test_cellmap_crop_from_all_and_bad_groups(tmp_path):
    dense = _dense((8, 16, 16)).astype(np.uint8)
    vol = labels.read_cellmap_crop(_cellmap(tmp_path, {"all": dense}), "crop7", COSEM_CLASS_MAP)
    np.testing.assert_array_equal(vol.data, dense)
    with pytest.raises(LabelImportError, match="no CellMap crop 'crop9'"):
        labels.read_cellmap_crop(tmp_path / "jrc_cell.zarr", "crop9", COSEM_CLASS_MAP)
    other = tmp_path / "x"
    other.mkdir()
    with pytest.raises(LabelImportError, match="not a class of the class map"):
        labels.read_cellmap_crop(_cellmap(other, {"banana": dense}), "crop7", COSEM_CLASS_MAP)


def test_tiff_stack_import(tmp_path):
    dense = _dense().astype(np.uint16)
    f = tmp_path / "labels.tif"
    tifffile.imwrite(f, dense)
    vol = labels.read_tiff_labels(f, voxel_size=GRID.voxel_size, raw_offset=(3, 4, 5))
    crop = place_crop(vol, GRID, COSEM_CLASS_MAP, name="t")
    assert crop.roi == Roi((3, 4, 5), (8, 16, 16))
    np.testing.assert_array_equal(crop.data, dense)
    with pytest.raises(LabelImportError, match="unreadable TIFF"):
        labels.read_tiff_labels(
            tmp_path / "nope.tif", voxel_size=GRID.voxel_size, raw_offset=(0, 0, 0)
        )


# --- inbox and revisions ---------------------------------------------------------------------


@pytest.fixture()
def sample(tmp_path):
    """A tiny raw OME-Zarr, its dense ground truth (Zarr v3, as write_ground_truth writes it)
    and an empty inbox."""
    raw_path, raw = raw_container(tmp_path, shape=(24, 48, 48))
    gt_path = tmp_path / "gt.zarr"
    gt = np.full(raw.shape, 35, dtype=np.uint8)
    gt[:, :20] = 3
    gt[:, 20:24] = 2
    gt[:8, 30:, 30:] = 4
    arr = zarr.create_array(store=str(gt_path), shape=gt.shape, chunks=(8, 16, 16), dtype="uint8")
    arr[...] = gt
    arr.attrs["voxel_size_nm"] = [8.0, 8.0, 8.0]
    return {
        "raw": raw_path,
        "gt_path": gt_path,
        "gt": gt,
        "inbox": tmp_path / "inbox",
        "tmp": tmp_path,
    }


def test_deliver_synthetic_annotations(sample):
    paths = labels.deliver_synthetic_annotations(
        sample["gt_path"],
        sample["inbox"],
        "r001",
        raw_voxel_size_nm=8.0,
        n_crops=3,
        crop_shape=(16, 24, 24),
        seed=1,
    )
    assert [p.name for p in paths] == [f"synthetic-crop0{i}.n5" for i in (1, 2, 3)]
    rois, splits = [], []
    for p in paths:
        side = AnnotationSidecar.read(p / labels.SIDECAR, "x")
        rois.append(side.roi)
        splits.append(side.split)
        # what an independent reader sees is the ground truth at the sidecar's ROI
        spec = {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(p / "volumes/labels/ground_truth/data/s0")},
        }
        got = np.asarray(ts.open(spec).result().read().result()).transpose()
        np.testing.assert_array_equal(got, sample["gt"][side.roi.to_slices()])
        assert open_label_group(p).offset_nm == tuple(8.0 * o for o in side.roi.offset)
    assert sorted(splits) == ["test", "train", "train"]
    assert all(a.intersect(b).size == 0 for i, a in enumerate(rois) for b in rois[i + 1 :])
    # idempotent: an identical delivery is kept as it is
    before = [(p / labels.SIDECAR).stat().st_mtime_ns for p in paths]
    labels.deliver_synthetic_annotations(
        sample["gt_path"],
        sample["inbox"],
        "r001",
        raw_voxel_size_nm=8.0,
        n_crops=3,
        crop_shape=(16, 24, 24),
        seed=1,
    )
    assert [(p / labels.SIDECAR).stat().st_mtime_ns for p in paths] == before
    with pytest.raises(ValueError, match="voxel size"):
        labels.deliver_synthetic_annotations(
            sample["gt_path"], sample["inbox"], "r001", raw_voxel_size_nm=4.0
        )


def test_scan_inbox_pending_rejected_and_complete(sample):
    inbox = sample["inbox"]
    labels.deliver_synthetic_annotations(
        sample["gt_path"], inbox, "r001", raw_voxel_size_nm=8.0, n_crops=2, crop_shape=(8, 8, 8)
    )
    write_paintera_labels(inbox / "r001" / "unfinished.n5", _dense(), voxel_size=GRID.voxel_size)
    bad = write_paintera_labels(inbox / "r001" / "bad.n5", _dense(), voxel_size=GRID.voxel_size)
    (bad / labels.SIDECAR).write_text("split: validation\n")
    scan = labels.scan_inbox(inbox, "r001")
    assert [s.name for s in scan.submissions] == ["synthetic-crop01.n5", "synthetic-crop02.n5"]
    assert "annotation.yaml" in scan.pending["unfinished.n5"]
    assert "split must be one of" in scan.rejected["bad.n5"]
    with pytest.raises(LabelImportError, match="bad.n5: rejected submission"):
        labels.plan_revision(RevisionStore(sample["tmp"] / "store"), scan)
    with pytest.raises(ValueError, match="invalid region key"):
        labels.scan_inbox(inbox, "../r001")


def _import(sample, store) -> tuple[labels.Revision, list[labels.LabelCheck]]:
    grid = labels.raw_grid(sample["raw"])
    scan = labels.scan_inbox(sample["inbox"], "r001")
    result = labels.import_revision(store, scan, grid, COSEM_CLASS_MAP)
    return result.revision, list(result.checks)


def _correct(path: Path, change) -> None:
    """Re-export a container with edited labels, as a curator saving a correction would."""
    g = open_label_group(path)
    data = g.read()
    change(data)
    side = (path / labels.SIDECAR).read_bytes()
    write_paintera_labels(
        path,
        data,
        voxel_size=g.resolution,
        offset_nm=g.offset_nm,
        extra_files={labels.SIDECAR: side},
    )


def test_revisions_corrections_bad_input_and_split(sample):
    store = RevisionStore(sample["tmp"] / "store" / "r001")
    inbox = sample["inbox"]
    paths = labels.deliver_synthetic_annotations(
        sample["gt_path"],
        inbox,
        "r001",
        raw_voxel_size_nm=8.0,
        n_crops=3,
        crop_shape=(12, 16, 16),
        seed=2,
    )

    rev1, checks = _import(sample, store)
    assert rev1.number == 1 and store.current() == rev1
    assert {c.name: c.passed for c in checks} == dict.fromkeys(
        [
            labels.IDS_IN_CLASS_MAP,
            labels.CROPS_INSIDE_RAW,
            labels.VOXEL_SIZE_COMPATIBLE,
            labels.CROPS_NOT_EMPTY,
            labels.ANNOTATED_FRACTION,
            labels.SPLIT_DISJOINT,
        ],
        True,
    )
    assert sorted(rev1.imported) == ["crop01", "crop02", "crop03"]
    c1 = rev1.crop("crop01")
    np.testing.assert_array_equal(rev1.read_crop("crop01"), sample["gt"][c1.roi.to_slices()])
    attrs = zarr.open_array(str(rev1.crops_path / "crop01"), mode="r").attrs.asdict()
    assert attrs["roi_raw_voxels"] == c1.roi.to_dict() and attrs["annotator"] == "synthetic-oracle"
    assert attrs["source"]["checksum"] and attrs["imported_in_revision"] == 1

    # nothing new: the same revision is reused (same data version)
    again, _ = _import(sample, store)
    assert again.number == 1 and again.data_version == rev1.data_version

    # a curator corrects crop02: revision 2, crop01/03 carried over, new data version
    _correct(paths[1], lambda d: d.__setitem__((0, 0, 0), 5))
    rev2, checks = _import(sample, store)
    assert rev2.number == 2 and rev2.parent == 1 and store.current() == rev2
    assert rev2.imported == ("crop02",) and sorted(rev2.carried_over) == ["crop01", "crop03"]
    assert rev2.data_version != rev1.data_version
    assert rev2.crop("crop02").checksum != rev1.crop("crop02").checksum
    assert rev2.crop("crop01").imported_in == 1 and rev2.crop("crop02").imported_in == 2

    # bad input: ids outside the map -> named error, nothing published, revision 2 stays current
    _correct(paths[0], lambda d: d.__setitem__((1, 1, 1), 200))
    with pytest.raises(
        LabelImportError, match=r"synthetic-crop01.n5: label ids outside the class map: 200"
    ):
        _import(sample, store)
    assert store.numbers() == [1, 2] and store.current().number == 2
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".")]
    _correct(paths[0], lambda d: d.__setitem__((1, 1, 1), 35))

    # a test crop overlapping a train crop fails the blocking split check and is not current
    train = next(
        p for p in paths if AnnotationSidecar.read(p / labels.SIDECAR, "x").split == "train"
    )
    roi = AnnotationSidecar.read(train / labels.SIDECAR, "x").roi
    leak = inbox / "r001" / "leak.n5"
    write_paintera_labels(
        leak,
        sample["gt"][roi.to_slices()].astype(np.uint64),
        voxel_size=GRID.voxel_size,
        offset_nm=[8.0 * o for o in roi.offset],
    )
    labels.write_sidecar(leak, AnnotationSidecar(crop="leak", split="test", annotator="x"))
    rev3, checks = _import(sample, store)
    split = {c.name: c for c in checks}[labels.SPLIT_DISJOINT]
    assert not split.passed and split.blocking and "leak" in split.description
    assert rev3.number == 3 and store.current().number == 2
    stats = pd.read_parquet(rev3.path / "label_stats.parquet")
    assert set(stats["crop"]) == {"crop01", "crop02", "crop03", "leak"}
    assert stats.groupby("crop")["fraction"].sum().round(6).eq(1.0).all()
    assert json.loads((rev3.path / "checks.json").read_text())[-1]["passed"] is False


def test_newest_submission_of_a_crop_wins(sample):
    inbox = sample["inbox"] / "r001"
    for name, value, when in (
        ("a.n5", 3, "2025-01-01T00:00:00+00:00"),
        ("b.n5", 4, "2025-02-01T00:00:00+00:00"),
    ):
        p = write_paintera_labels(
            inbox / name, np.full((4, 4, 4), value, np.uint64), voxel_size=GRID.voxel_size
        )
        labels.write_sidecar(p, AnnotationSidecar(crop="c1", exported_at=when, minutes_spent=12))
    store = RevisionStore(sample["tmp"] / "s")
    rev, _ = _import(sample, store)
    assert [c.name for c in rev.crops] == ["c1"] and rev.read_crop("c1").max() == 4
    assert rev.superseded[0]["container"].endswith("a.n5")
    assert rev.crop("c1").minutes_spent == 12


def test_checks_flag_empty_and_sparse_crops(sample):
    p = write_paintera_labels(
        sample["inbox"] / "r001" / "e.n5",
        np.zeros((4, 4, 4), np.uint64),
        voxel_size=GRID.voxel_size,
    )
    labels.write_sidecar(p, AnnotationSidecar(crop="empty"))
    rev, checks = _import(sample, RevisionStore(sample["tmp"] / "s"))
    by = {c.name: c for c in checks}
    assert not by[labels.CROPS_NOT_EMPTY].passed and not by[labels.ANNOTATED_FRACTION].passed
    assert not by[labels.ANNOTATED_FRACTION].blocking
    # a raw volume that shrank puts the crop outside it
    small = RawGrid((2, 2, 2), VoxelSize(8, 8, 8))
    assert not {c.name: c for c in labels.evaluate_revision(rev, small, COSEM_CLASS_MAP)}[
        labels.CROPS_INSIDE_RAW
    ].passed


def test_export_current_ground_truth_and_overlay(sample):
    labels.deliver_synthetic_annotations(
        sample["gt_path"],
        sample["inbox"],
        "r001",
        raw_voxel_size_nm=8.0,
        n_crops=2,
        crop_shape=(8, 16, 16),
    )
    store = RevisionStore(sample["tmp"] / "s")
    rev, _ = _import(sample, store)
    grid = labels.raw_grid(sample["raw"])
    source = labels.RevisionLabelSource(rev, grid)
    out = export_paintera(sample["raw"], sample["tmp"] / "gt.zarr", labels=source, chunks=(8, 8, 8))
    got = zarr.open_group(out.path, mode="r")["volumes/labels/ground_truth/data/s0"][...]
    expected = np.zeros(grid.shape, dtype=np.uint64)
    for c in rev.crops:
        expected[c.roi.to_slices()] = sample["gt"][c.roi.to_slices()]
    np.testing.assert_array_equal(got, expected)
    from fib_assets.core.formats.paintera import OmeZarrImage

    png = labels.revision_overlay_png(rev, OmeZarrImage(sample["raw"]).read, COSEM_CLASS_MAP)
    img = Image.open(io.BytesIO(png))
    assert img.mode == "RGB" and img.size[0] > img.size[1]
    summary = labels.class_summary(
        pd.read_parquet(rev.path / "label_stats.parquet"), COSEM_CLASS_MAP
    )
    assert {"cyto", "mito"} <= set(summary["class"])


def test_crops_at_twice_the_raw_resolution_export_on_the_raw_grid(sample):
    fine = np.repeat(np.repeat(np.repeat(sample["gt"][4:8, 8:16, 8:16], 2, 0), 2, 1), 2, 2)
    p = write_paintera_labels(
        sample["inbox"] / "r001" / "fine.n5",
        fine.astype(np.uint64),
        voxel_size=VoxelSize(4, 4, 4),
        offset_nm=(4 * 8 - 2, 8 * 8 - 2, 8 * 8 - 2),
    )
    labels.write_sidecar(p, AnnotationSidecar(crop="fine", split="train"))
    rev, checks = _import(sample, RevisionStore(sample["tmp"] / "s"))
    assert labels.accepted(checks)
    c = rev.crop("fine")
    assert c.roi == Roi((4, 8, 8), (4, 8, 8)) and c.factor == (2, 2, 2)
    got = labels.RevisionLabelSource(rev, labels.raw_grid(sample["raw"])).read(
        Roi((4, 8, 8), (4, 8, 8))
    )
    np.testing.assert_array_equal(got, sample["gt"][4:8, 8:16, 8:16])


def test_cellmap_and_tiff_submissions_through_the_inbox(sample):
    inbox = sample["inbox"] / "r001"
    gt = sample["gt"]
    cm_dir = inbox / "cm"
    cm_dir.mkdir(parents=True)
    dense = np.repeat(np.repeat(np.repeat(gt[2:4, 4:8, 4:8], 2, 0), 2, 1), 2, 2)
    path = _cellmap(cm_dir, {"all": dense}, translation=(2 * 8 - 2, 4 * 8 - 2, 4 * 8 - 2))
    path = path.rename(inbox / "cellmap-export.zarr")
    labels.write_sidecar(path, AnnotationSidecar(crop="crop7", split="test", format="cellmap"))
    tif = inbox / "tiff-export"
    tif.mkdir()
    tifffile.imwrite(tif / "labels.tif", gt[10:14, 30:40, 30:40], photometric="minisblack")
    labels.write_sidecar(
        tif, AnnotationSidecar(crop="t1", roi=Roi((10, 30, 30), (4, 10, 10)), minutes_spent=3.5)
    )
    rev, checks = _import(sample, RevisionStore(sample["tmp"] / "s"))
    assert labels.accepted(checks)
    assert rev.crop("crop7").source["format"] == "cellmap" and rev.crop("crop7").factor == (2, 2, 2)
    assert rev.crop("crop7").roi == Roi((2, 4, 4), (2, 4, 4))
    np.testing.assert_array_equal(rev.read_crop("t1"), gt[10:14, 30:40, 30:40])
    assert rev.crop("t1").source["format"] == "tiff" and rev.crop("t1").minutes_spent == 3.5


def test_an_empty_inbox_is_a_named_error(sample):
    with pytest.raises(LabelImportError, match="no annotations for region r001"):
        _import(sample, RevisionStore(sample["tmp"] / "s"))


def test_validate_submission_is_a_dry_run(sample, tmp_path):
    grid = labels.raw_grid(sample["raw"])
    ok = write_paintera_labels(tmp_path / "ok.n5", _dense((4, 8, 8)), voxel_size=grid.voxel_size)
    crop = labels.validate_submission(ok, grid)
    assert crop.name == "ok" and crop.roi == Roi((0, 0, 0), (4, 8, 8))
    with pytest.raises(LabelImportError, match="no such container"):
        labels.validate_submission(tmp_path / "missing.n5", grid)


def test_paintera_zarr_submissions(sample):
    paths = labels.deliver_synthetic_annotations(
        sample["gt_path"],
        sample["inbox"],
        "r001",
        raw_voxel_size_nm=8.0,
        n_crops=2,
        crop_shape=(8, 16, 16),
        container_format=".zarr",
    )
    assert all(p.suffix == ".zarr" for p in paths)
    assert zarr.open_group(str(paths[0]), mode="r").metadata.zarr_format == 2
    rev, checks = _import(sample, RevisionStore(sample["tmp"] / "s"))
    assert labels.accepted(checks) and len(rev.crops) == 2
    for c in rev.crops:
        np.testing.assert_array_equal(rev.read_crop(c.name), sample["gt"][c.roi.to_slices()])
