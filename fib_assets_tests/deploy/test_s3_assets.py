"""The region assets on an ``s3://`` storage root, against a real S3-protocol server (moto on
loopback), through Dagster's own materialize path: raw_acquisition -> raw_volume -> every
volume_* variant, read back by independent libraries (s3fs + pyarrow/h5py/tifffile/numcodecs,
zarr over fsspec, tensorstore's s3 driver). Failure tests kill the server mid-publish and
corrupt objects, and prove that no completion marker is ever left for a half-published or
wrong container."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter for h5py)
import numcodecs
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import s3fs
import tensorstore as ts
import tifffile
import zarr
from moto.server import ThreadedMotoServer
from zarr.storage import FsspecStore

from fib_assets.core import storage
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.dagster_helpers import materialize
from fib_assets_tests.deploy.conftest import LOOPBACK, S3_TEST_ENV, free_port, s3_client

pytestmark = pytest.mark.s3

FORMATS = ["tiff", "hdf5", "zarr", "parquet", "n5"]
SMALL = {"ops": {f"volume_{f}": {"config": {"chunk_size": 16}} for f in FORMATS}}
STAGED = ["tiff", "hdf5", "parquet", "n5"]  # local-file writers: staged, uploaded, marked


def _run(instance, resources, selection, run_config=SMALL):
    """r001 through the project's assets, every variant in small chunks unless told."""
    return materialize(instance, resources, selection, "r001", run_config)


def _mats(res) -> dict:
    return {
        m.asset_key.to_user_string(): m.materialization
        for m in res.get_asset_materialization_events()
    }


@pytest.fixture()
def landing(tmp_path, tiny_sample) -> Path:
    out = tmp_path / "landing"
    shutil.copytree(tiny_sample / "landing", out)
    return out


def _resources(tmp_path, landing, root: str) -> dict:
    res = code_location_resources(tmp_path, landing)
    res["storage"] = StorageResource(root=root, landing_zone=str(landing))
    return res


def _key(url: str) -> str:
    return url.removeprefix("s3://")


def _parquet_volume(fs: s3fs.S3FileSystem, url: str, shape, chunk: int) -> np.ndarray:
    """Decode the Parquet variant from its documented columns with pyarrow + numcodecs."""
    table = pads.dataset(_key(url), filesystem=fs, format="parquet").to_table()
    out = np.zeros(shape, dtype=np.uint8)
    codec = numcodecs.Zstd()
    for row in table.to_pylist():
        cz, cy, cx = row["cz"], row["cy"], row["cx"]
        block = np.frombuffer(codec.decode(row["data"]), dtype=np.uint8).reshape(row["shape"])
        z, y, x = cz * chunk, cy * chunk, cx * chunk
        out[z : z + block.shape[0], y : y + block.shape[1], x : x + block.shape[2]] = block
    return out


def test_region_materializes_on_s3_and_independent_libraries_read_it_back(
    s3_server, tmp_path, landing, scratch
):
    root = s3_server.url("assets")
    resources = _resources(tmp_path, landing, root)
    fs = s3_client(s3_server.endpoint_url)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(regions.name, ["r001"])
        res = _run(instance, resources, dg.AssetSelection.groups("acquisitions", "formats"))
        assert res.success
        checks = {
            (e.asset_key.to_user_string(), e.check_name): e.passed
            for e in res.get_asset_check_evaluations()
        }
        assert len(checks) == 2 + 4 + len(FORMATS) and all(checks.values()), checks
        mats = _mats(res)
        assert set(mats) == {"raw_acquisition", "raw_volume", *(f"volume_{f}" for f in FORMATS)}
        uris = {k: m.metadata["dagster/uri"].value for k, m in mats.items()}
        for asset, uri in uris.items():
            assert uri.startswith(f"{root}/{asset}/r001/"), uri
        # nothing went to a local storage folder, and the staging scratch is cleaned up
        assert not (tmp_path / "storage").exists()
        assert not any((scratch / "stage").iterdir())

        # raw_acquisition: the manifest and the headers table, read with s3fs + pyarrow
        acq = uris["raw_acquisition"]
        manifest = fs.cat_file(_key(f"{acq}/manifest-sha256.txt")).decode().splitlines()
        assert len(manifest) == len(list((landing / "r001").glob("*.dat")))
        headers = pq.read_table(_key(f"{acq}/headers.parquet"), filesystem=fs).to_pandas()
        assert sorted(headers["sha256"]) == sorted(line.split()[0] for line in manifest)
        assert json.loads(fs.cat_file(_key(f"{acq}/region.json")))["region"] == "r001"

        # raw_volume: zarr-python over our own fsspec store, tensorstore over its s3 driver
        raw = uris["raw_volume"]
        assert fs.exists(_key(raw + storage.COMPLETE_SUFFIX))
        group = zarr.open_group(
            FsspecStore(
                fs=s3_client(s3_server.endpoint_url, asynchronous=True),
                path=_key(raw),
                read_only=True,
            ),
            mode="r",
        )
        canonical = np.asarray(group["uint8/s0"])
        assert canonical.shape == (16, 64, 64) and canonical.std() > 0
        s3_kv = {"driver": "s3", "bucket": s3_server.bucket, "endpoint": s3_server.endpoint_url}
        rkey = _key(raw).split("/", 1)[1]
        by_ts = ts.open({"driver": "zarr3", "kvstore": {**s3_kv, "path": f"{rkey}/raw/s0/"}})
        by_ts = by_ts.result()
        np.testing.assert_array_equal(by_ts.read().result(), np.asarray(group["raw/s0"]))

        # every variant decodes to the canonical voxels, read by an independent library
        with fs.open(_key(uris["volume_hdf5"]), "rb") as fh, h5py.File(fh, "r") as h5:
            np.testing.assert_array_equal(h5["volume"][...], canonical)
        with fs.open(_key(uris["volume_tiff"]), "rb") as fh:
            np.testing.assert_array_equal(tifffile.imread(fh), canonical)
        zkey = _key(uris["volume_zarr"]).split("/", 1)[1]
        by_ts = ts.open({"driver": "zarr3", "kvstore": {**s3_kv, "path": f"{zkey}/s0/"}}).result()
        np.testing.assert_array_equal(by_ts.read().result(), canonical)
        nkey = _key(uris["volume_n5"]).split("/", 1)[1]
        n5 = ts.open({"driver": "n5", "kvstore": {**s3_kv, "path": f"{nkey}/volumes/raw/s0/"}})
        np.testing.assert_array_equal(np.asarray(n5.result().read().result()).T, canonical)
        np.testing.assert_array_equal(
            _parquet_volume(fs, uris["volume_parquet"], canonical.shape, 16), canonical
        )

        # staged variants: a marker listing every object with its size and sha256, written
        # after the objects; the write record beside it
        for fmt in STAGED:
            url = uris[f"volume_{fmt}"]
            marker = json.loads(fs.cat_file(_key(url + storage.COMPLETE_SUFFIX)))
            stored = storage.list_files(url)
            assert {k: v["size"] for k, v in marker["files"].items()} == stored, fmt
            assert fs.exists(_key(url + ".write.json"))
            assert "staged locally" in mats[f"volume_{fmt}"].metadata["storage_mode"].value
            newest = max(fs.info(_key(f"{url}/{k}" if len(stored) > 1 else url))["LastModified"]
                         for k in stored)  # fmt: skip
            assert fs.info(_key(url + storage.COMPLETE_SUFFIX))["LastModified"] >= newest

        # a rerun reuses every published variant (downloaded, verified against its marker,
        # decoded again by the blocking check), with the same data versions
        again = _run(instance, resources, dg.AssetSelection.groups("formats"))
        assert again.success
        assert all(e.passed for e in again.get_asset_check_evaluations())
        for fmt in FORMATS:
            first, second = mats[f"volume_{fmt}"], _mats(again)[f"volume_{fmt}"]
            assert second.tags["dagster/data_version"] == first.tags["dagster/data_version"]
            # the write record is reused, not rewritten
            assert second.metadata["write_seconds"].value == first.metadata["write_seconds"].value
        assert not any((scratch / "stage").iterdir())


class KillableS3:
    """A moto server of this test alone, which the test may stop mid-publish and restart on
    the same port (moto keeps its state in the process, as a real service keeps its disks)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address=LOOPBACK, port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture()
def killable_s3(monkeypatch):
    import boto3

    server = KillableS3()
    server.start()
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**S3_TEST_ENV, "AWS_ENDPOINT_URL": server.endpoint_url}.items():
        monkeypatch.setenv(key, value)
    # a quick give-up on a dead server (botocore's own retries; s3fs retries on top)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket="killable")
    try:
        yield server
    finally:
        server.stop()


def test_server_killed_mid_publish_leaves_no_marker_and_the_rerun_publishes(
    killable_s3, tmp_path, landing, scratch, monkeypatch
):
    root = "s3://killable/assets"
    resources = _resources(tmp_path, landing, root)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(regions.name, ["r001"])
        assert _run(instance, resources, dg.AssetSelection.groups("acquisitions"), None).success

        real_put = storage._put_file
        uploads = {"n": 0}

        def put_then_die(fs, local, remote):
            real_put(fs, local, remote)
            uploads["n"] += 1
            if uploads["n"] == 3:
                killable_s3.stop()  # the service goes away after three objects

        monkeypatch.setattr(storage, "_put_file", put_then_die)
        only_n5 = {"ops": {"volume_n5": SMALL["ops"]["volume_n5"]}}
        failed = _run(instance, resources, dg.AssetSelection.assets("volume_n5"), only_n5)
        assert not failed.success and uploads["n"] == 3
        assert "volume_n5" not in _mats(failed)
        assert not any((scratch / "stage").iterdir())  # scratch cleaned up after the failure

        # the service comes back: three objects are there, but no marker, no write record
        killable_s3.start()
        folder = f"{root}/volume_n5/r001"
        names = storage.list_files(folder)
        (container,) = {k.split("/", 1)[0] for k in names}
        url = f"{folder}/{container}"
        assert len(storage.list_files(url)) == 3
        assert not storage.exists(url + storage.COMPLETE_SUFFIX)
        assert not storage.exists(url + ".write.json")
        assert not storage.is_complete(url)

        monkeypatch.setattr(storage, "_put_file", real_put)
        rerun = _run(instance, resources, dg.AssetSelection.assets("volume_n5"), only_n5)
        assert rerun.success
        assert _mats(rerun)["volume_n5"].metadata["dagster/uri"].value == url
        assert storage.is_complete(url) and len(storage.list_files(url)) > 3
        (check,) = rerun.get_asset_check_evaluations()
        assert check.passed


def test_an_object_that_reads_back_wrong_is_never_marked_and_a_corrupted_one_is_rewritten(
    s3_server, tmp_path, landing, scratch, monkeypatch
):
    root = s3_server.url("corrupt")
    resources = _resources(tmp_path, landing, root)
    only_h5 = {"ops": {"volume_hdf5": SMALL["ops"]["volume_hdf5"]}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(regions.name, ["r001"])
        assert _run(instance, resources, dg.AssetSelection.groups("acquisitions"), None).success

        real_put = storage._put_file

        def put_corrupted(fs, local, remote):
            # the service stores different bytes than were sent (a bad proxy, a bit flip)
            data = bytearray(Path(local).read_bytes())
            data[len(data) // 2] ^= 0xFF
            fs.pipe_file(remote, bytes(data))

        monkeypatch.setattr(storage, "_put_file", put_corrupted)
        failed = _run(instance, resources, dg.AssetSelection.assets("volume_hdf5"), only_h5)
        assert not failed.success
        failure = next(e for e in failed.all_events if e.is_step_failure)
        assert "does not read back as sent" in failure.step_failure_data.error.to_string()
        folder = f"{root}/volume_hdf5/r001"
        (name,) = storage.list_files(folder)
        url = f"{folder}/{name}"
        assert not storage.is_complete(url) and not storage.exists(url + ".write.json")

        monkeypatch.setattr(storage, "_put_file", real_put)
        good = _run(instance, resources, dg.AssetSelection.assets("volume_hdf5"), only_h5)
        assert good.success and storage.is_complete(url)
        sent = storage.read_bytes(url)

        # a published object corrupted afterwards: the rerun finds it differs from its marker,
        # retracts the variant and rewrites it (and the blocking check passes on the new one)
        bad = bytearray(sent)
        bad[len(bad) // 2] ^= 0xFF
        storage.write_bytes(url, bytes(bad))
        healed = _run(instance, resources, dg.AssetSelection.assets("volume_hdf5"), only_h5)
        assert healed.success
        logs = [
            r.user_message
            for r in instance.all_logs(healed.run_id)
            if "corrupt object" in r.user_message
        ]
        assert logs and name in logs[0]
        # a new, complete copy (HDF5 files carry write times, so not byte-identical)
        assert storage.read_bytes(url) != bytes(bad)
        storage.download_verified(url, tmp_path / "healed.h5")
        (check,) = healed.get_asset_check_evaluations()
        assert check.passed


def test_scratch_is_bounded_and_the_landing_zone_must_be_a_filesystem(
    s3_server, tmp_path, landing, scratch, monkeypatch
):
    resources = _resources(tmp_path, landing, s3_server.url("bounded"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(regions.name, ["r001"])
        assert _run(instance, resources, dg.AssetSelection.groups("acquisitions"), None).success
        # the raw volume is 16 x 64 x 64 uint8 = 64 KiB: a 10 KiB scratch cannot stage it
        monkeypatch.setenv(storage.SCRATCH_LIMIT_ENV, str(10 * 1024))
        only = {"ops": {"volume_tiff": SMALL["ops"]["volume_tiff"]}}
        res = _run(instance, resources, dg.AssetSelection.assets("volume_tiff"), only)
        assert not res.success
        failure = next(e for e in res.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.to_string()
        assert "staging needs about" in message and str(scratch) in message
        assert storage.list_files(f"{s3_server.url('bounded')}/volume_tiff") == {}
        # Zarr is written in place by tensorstore: no scratch needed
        only = {"ops": {"volume_zarr": SMALL["ops"]["volume_zarr"]}}
        assert _run(instance, resources, dg.AssetSelection.assets("volume_zarr"), only).success

    remote_landing = StorageResource(root=s3_server.url("x"), landing_zone="s3://bkt/landing")
    with pytest.raises(storage.StorageError, match="landing zone must be a filesystem path"):
        remote_landing.region_source("r001")


def test_publish_and_download_round_trip_a_tree_and_a_file(s3_server, tmp_path, scratch):
    tree = tmp_path / "v.n5"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "attributes.json").write_text("{}")
    (tree / "a" / "b" / "0").write_bytes(bytes(range(256)) * 40)
    url = s3_server.url("publish", "v.n5")
    manifest = storage.publish_staged(tree, url, info={"k": 1})
    assert set(manifest) == {"attributes.json", "a/b/0"}
    assert storage.read_json(storage.marker_url(url))["layout"] == "tree"
    back = storage.download_verified(url, tmp_path / "back" / "v.n5")
    assert (back / "a" / "b" / "0").read_bytes() == (tree / "a" / "b" / "0").read_bytes()

    single = tmp_path / "v.h5"
    single.write_bytes(b"\x89HDF" + bytes(5000))
    furl = s3_server.url("publish", "v.h5")
    storage.publish_staged(single, furl)
    got = storage.download_verified(furl, tmp_path / "back" / "v.h5")
    assert got.read_bytes() == single.read_bytes()
    # a missing object listed by the marker is named
    storage.remove(f"{url}/a/b/0")
    with pytest.raises(storage.StorageError, match="a/b/0: listed in the completion marker"):
        storage.download_verified(url, tmp_path / "again" / "v.n5")
    # publishing over it again retracts first, and an unfinished one is not downloadable
    storage.retract(url)
    with pytest.raises(FileNotFoundError, match="no completion marker"):
        storage.download_verified(url, tmp_path / "x")
    with pytest.raises(storage.StorageError, match="object-store"):
        storage.publish_staged(tree, str(tmp_path / "local"))
