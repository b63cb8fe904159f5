"""The storage backend against a real S3-protocol server (moto, on loopback): a region's raw
volume and its Zarr format variant are written and read back through the same code as on local
disk, with the object-store publish semantics (completion marker last, resumable markers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from fib_assets.core import storage
from fib_assets.core.acquisition import assemble
from fib_assets.core.acquisition.region import inventory_region
from fib_assets.core.formats import zarr as zarr_format
from fib_assets.core.formats.base import VolumeInfo
from fib_assets.core.formats.verify import verify_same_voxels
from fib_assets.core.geometry import Roi, VoxelSize
from fib_assets.defs.resources import StorageResource

pytestmark = pytest.mark.s3

# small shards: many blocks and two pyramid levels on the 16 x 64 x 64 tiny region
PLAN_KW = {"chunks": (8, 16, 16), "shards": (8, 32, 32), "min_level_size": 8}


@pytest.fixture()
def plan(tiny_sample):
    return assemble.plan_raw_volume(
        inventory_region(Path(tiny_sample) / "landing" / "r001"), **PLAN_KW
    )


class Uint8Level0:
    """VolumeSource over the canonical container's ``uint8/s0`` at any location (the adapter
    ``CanonicalSource`` will be once it reads through ``fib_assets.core.storage``)."""

    def __init__(self, container: str) -> None:
        ome, levels = zarr_format.open_multiscale(container, "uint8")
        self._arr = levels[0]
        scale = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
        z, y, x = (int(s) for s in self._arr.shape)
        cz, cy, cx = (int(c) for c in self._arr.chunks)
        self._info = VolumeInfo((z, y, x), "uint8", VoxelSize(*scale), (cz, cy, cx))

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def read(self, roi: Roi) -> np.ndarray:
        return np.asarray(self._arr[roi.to_slices()])


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_storage_primitives_behave_the_same_on_disk_and_s3(backend, s3_server, tmp_path):
    root = str(tmp_path / "root") if backend == "local" else s3_server.url("prims")
    target = storage.join(root, "a", "b.json")
    assert not storage.exists(target)
    storage.write_json(target, {"x": 1})
    assert storage.exists(target) and storage.read_json(target) == {"x": 1}
    storage.write_bytes(storage.join(root, "a", "c", "d.bin"), b"12345")
    n = len(storage.read_bytes(target))
    assert storage.list_files(storage.join(root, "a")) == {"b.json": n, "c/d.bin": 5}
    assert storage.tree_size(storage.join(root, "a")) == (n + 5, 2)
    with pytest.raises(FileNotFoundError, match="nothing"):
        storage.read_bytes(storage.join(root, "nothing"))
    with pytest.raises(storage.StorageError, match="relative"):
        storage.join(root, "../escape")
    storage.remove(storage.join(root, "a"))
    assert storage.list_files(root) == {} or not storage.exists(root)


def test_raw_volume_on_s3_equals_local_and_is_published_by_its_marker(
    plan, s3_server, tmp_path, scratch
):
    local = assemble.execute_raw_volume(plan, tmp_path / "storage" / "raw_volume" / "r001")
    out = StorageResource(root=s3_server.url("storage")).asset_url("raw_volume", "r001")
    assert out == "s3://fib-assets/storage/raw_volume/r001"

    remote = assemble.execute_raw_volume(plan, out)
    assert remote.path == f"{out}/{plan.output_name}" and not remote.reused
    # same bytes, same content address, same QC
    assert remote.checksum == local.checksum
    assert remote.block_checksums == local.block_checksums
    assert (remote.low, remote.high) == (local.low, local.high)
    assert remote.stats.equals(local.stats)
    assert storage.is_complete(remote.path)
    assert storage.read_json(storage.marker_url(remote.path))["checksum"] == remote.checksum

    # independent readers over S3: zarr-python (fsspec) and tensorstore (its own s3 driver)
    by_zarr = zarr.open_group(storage.zarr_store(remote.path, read_only=True), mode="r")
    by_disk = zarr.open_group(local.path, mode="r")
    for name in ("raw/s0", "raw/s1", "uint8/s0", "uint8/s1"):
        np.testing.assert_array_equal(np.asarray(by_zarr[name]), np.asarray(by_disk[name]))
    s0 = ts.open(
        {"driver": "zarr3", "kvstore": storage.tensorstore_kvstore(f"{remote.path}/raw/s0")}
    ).result()
    np.testing.assert_array_equal(s0.read().result(), np.asarray(by_disk["raw/s0"]))
    assert remote.bytes_on_disk == local.bytes_on_disk

    # a rerun reuses the published container, from the objects alone (new pod: empty scratch)
    again = assemble.execute_raw_volume(plan, out)
    assert again.reused and again.checksum == remote.checksum and again.stats.equals(local.stats)


def test_a_killed_writer_leaves_an_absent_container_and_the_next_pod_resumes(
    plan, s3_server, scratch, monkeypatch
):
    out = s3_server.url("killed", "raw_volume", "r001")
    final = f"{out}/{plan.output_name}"
    real = assemble.stretch_to_uint8
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("pod OOM-killed")
        return real(*a, **k)

    monkeypatch.setattr(assemble, "stretch_to_uint8", dying)
    with pytest.raises(MemoryError):
        assemble.execute_raw_volume(plan, out)
    # objects were written under the final key, but without the marker the container is absent
    assert storage.exists(f"{final}/zarr.json")
    assert not storage.is_complete(final)
    first_two = [b.block_id for b in list(plan.block_plan.blocks())[:2]]
    done = storage.block_ledger(f"{out}/.blocks", plan.fingerprint).done_ids()
    assert done == {"created", *first_two}  # blocks run in plan order; the third died

    # the pod is replaced: its scratch is gone, only the objects remain
    shutil.rmtree(scratch, ignore_errors=True)
    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(assemble, "stretch_to_uint8", counting)
    res = assemble.execute_raw_volume(plan, out)
    assert counted["n"] == len(plan.block_plan) - 2  # only the blocks not marked done ran
    assert storage.is_complete(final) and not res.reused
    expected = assemble.execute_raw_volume(plan, out)
    assert expected.reused and expected.checksum == res.checksum


def test_zarr_variant_on_s3_is_the_same_variant_as_on_disk(plan, s3_server, tmp_path, scratch):
    canonical = assemble.execute_raw_volume(plan, s3_server.url("storage", "raw_volume", "r001"))
    source = Uint8Level0(canonical.path)
    name = "v-test.ome.zarr"
    kw = {"chunks": (8, 16, 16), "levels": 2}

    on_disk = zarr_format.write_volume(
        zarr_format.plan_write(tmp_path / name, source.info, **kw), source
    )
    target = storage.join(
        StorageResource(root=s3_server.url("storage")).asset_url("volume_zarr", "r001"), name
    )
    written = zarr_format.write_volume(zarr_format.plan_write(target, source.info, **kw), source)
    assert written.path == target
    assert written.block_checksums == on_disk.block_checksums
    assert written.file_count == on_disk.file_count
    assert storage.is_complete(target)
    # the block markers are removed once the variant is published
    assert not storage.exists(f"{storage.parent(target)}/.{name}.blocks")

    reader = zarr_format.open_volume(target)
    try:
        assert reader.info == zarr_format.open_volume(on_disk.path).info
        check = verify_same_voxels(source, reader, block_shape=(8, 32, 32))
        assert check.passed and check.n_blocks > 1
        roi = Roi((3, 5, 7), (9, 40, 33))
        np.testing.assert_array_equal(reader.read(roi), source.read(roi))
    finally:
        reader.close()

    # readers treat a container without its marker as absent, even though its objects exist
    storage.retract(target)
    assert storage.exists(f"{target}/zarr.json")
    with pytest.raises(FileNotFoundError, match="completion marker"):
        zarr_format.open_volume(target)


def test_locations_parse_and_configure_from_the_environment_only(monkeypatch):
    assert storage.join("s3://Bkt/pre/", "a", "b/c") == "s3://Bkt/pre/a/b/c"
    assert storage.parent("s3://bkt/pre/v.ome.zarr") == "s3://bkt/pre"
    assert storage.name("s3://bkt/pre/v.ome.zarr/") == "v.ome.zarr"
    assert storage.marker_url("s3://bkt/pre/v.ome.zarr") == "s3://bkt/pre/v.ome.zarr.complete.json"
    assert storage.split_bucket("s3://bkt/pre/x") == ("bkt", "pre/x")
    assert storage.join("/data/storage", "raw_volume", "r001") == "/data/storage/raw_volume/r001"
    assert not storage.is_remote("file:///data") and storage.normalize("file:///data") == "/data"
    with pytest.raises(storage.StorageError, match="bucket"):
        storage.normalize("s3://")
    with pytest.raises(storage.StorageError, match="unsupported storage scheme 'gs'"):
        storage.is_remote("gs://bkt/x")
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    # on a pod with a service account: no endpoint, tensorstore's default credential chain
    assert storage.tensorstore_kvstore("s3://bkt/pre/v.ome.zarr/s0") == {
        "driver": "s3",
        "bucket": "bkt",
        "path": "pre/v.ome.zarr/s0/",
    }
    assert storage.storage_options("s3://bkt/x") == {"use_listings_cache": False}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    spec = storage.tensorstore_kvstore("s3://bkt/pre")
    assert (spec["endpoint"], spec["aws_region"]) == ("http://127.0.0.1:9000", "eu-west-1")
    assert storage.storage_options("s3://bkt/x")["client_kwargs"] == {
        "endpoint_url": "http://127.0.0.1:9000",
        "region_name": "eu-west-1",
    }
    assert storage.tensorstore_kvstore("/data/v/s0") == {"driver": "file", "path": "/data/v/s0"}


def test_storage_resource_gives_urls_for_both_roots_and_paths_only_for_local(tmp_path):
    local = StorageResource(root=str(tmp_path / "storage"), landing_zone=str(tmp_path))
    assert local.asset_url("raw_volume", "r001") == str(local.asset_dir("raw_volume", "r001"))
    assert (tmp_path / "storage" / "raw_volume" / "r001").is_dir()
    remote = StorageResource(root="s3://fib-assets-data/storage", landing_zone=str(tmp_path))
    assert remote.is_remote and not local.is_remote
    assert (
        remote.asset_url("volume_zarr", "r002") == "s3://fib-assets-data/storage/volume_zarr/r002"
    )
    with pytest.raises(storage.StorageError, match="asset_url"):
        remote.asset_dir("raw_volume", "r001")
    with pytest.raises(ValueError, match="region"):
        remote.asset_url("raw_volume", "../etc")
