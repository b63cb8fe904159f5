"""The format benchmark, the provenance family and the benchmark tables on an ``s3://`` storage
root, against a real S3-protocol server (moto on loopback), through Dagster's own materialize
path. Everything written is read back from the bucket by independent readers (s3fs + pyarrow,
``bagit`` on a downloaded copy of the bag, ``rocrate``, hashlib over the object bytes); objects
altered in the bucket make the fixity checks fail naming them, and an interrupted publication
leaves no completion marker."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import bagit
import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from rocrate.rocrate import ROCrate

from fib_assets.core import benchmark, storage, tables
from fib_assets.core.provenance import bag as core_bag
from fib_assets.core.provenance.crate import PROCESS_RUN_CRATE
from fib_assets.definitions import defs
from fib_assets.defs.partitions import regions
from fib_assets.defs.provenance.resources import FigshareResource
from fib_assets.defs.resources import StorageResource
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.core.provenance.fake_figshare import FakeFigshare
from fib_assets_tests.dagster_helpers import failure_text, materialization, materialize
from fib_assets_tests.deploy.conftest import s3_client

pytestmark = pytest.mark.s3

FORMATS = ["tiff", "hdf5", "zarr", "parquet", "n5"]
SMALL = {"ops": {f"volume_{f}": {"config": {"chunk_size": 16}} for f in FORMATS}}
BENCH = {"ops": {"format_benchmark": {"config": {"repeats": 1, "patch": 8, "n_patches": 2}}}}
DEPOSIT = {"regions": ["r001"], "max_payload_mib": 0.4}  # sources fit; raw volume is a subset
TOKEN = "figshare-s3-test-token-5d0c"


def _deposit(instance, resources):
    return materialize(instance, resources, ["deposit_package"],
                       run_config={"ops": {"deposit_package": {"config": DEPOSIT}}})  # fmt: skip


def _resources(tmp_path: Path, landing: Path, root: str, api_url: str | None = None) -> dict:
    res = code_location_resources(tmp_path, landing)
    res["storage"] = StorageResource(root=root, landing_zone=str(landing))
    if api_url:
        res["figshare"] = FigshareResource(
            token=TOKEN, api_url=api_url, max_attempts=2, backoff_seconds=0.0, timeout_seconds=10
        )
    return res


def _key(url: str) -> str:
    return url.removeprefix("s3://")


def _check_job(instance, resources, job: str, tags=None):
    out = defs.resolve_job_def(job).execute_in_process(
        instance=instance, resources=resources, tags=tags or {}, raise_on_error=False
    )
    (ev,) = out.get_asset_check_evaluations()
    return ev


@pytest.fixture(scope="module")
def region_on_s3(s3_server, tmp_path_factory, tiny_sample):
    """r001 acquired and converted to every variant on the bucket, once for the module; the
    pod-local scratch is a folder of this module's own."""
    base = tmp_path_factory.mktemp("s3prov")
    landing = base / "landing"
    shutil.copytree(tiny_sample / "landing", landing)
    mp = pytest.MonkeyPatch()
    mp.setenv("FIB_ASSETS_SCRATCH", str(base / "scratch"))
    root = s3_server.url("prov")
    resources = _resources(base, landing, root)
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(regions.name, ["r001"])
            res = materialize(
                instance, resources, dg.AssetSelection.groups("acquisitions", "formats"), "r001",
                SMALL,
            )  # fmt: skip
            assert res.success, failure_text(res, traceback=True)
            yield instance, resources, base, landing, root
    finally:
        mp.undo()


def test_benchmark_audit_deposit_and_draft_on_s3_read_back_independently(s3_server, region_on_s3):
    instance, resources, base, landing, root = region_on_s3
    fs = s3_client(s3_server.endpoint_url)

    # --- format_benchmark: measured where the variants live, table in the bucket -----------
    res = materialize(instance, resources, ["format_benchmark"], run_config=BENCH)
    assert res.success, failure_text(res, traceback=True)
    mat = materialization(res, "format_benchmark")
    uri = mat.metadata["dagster/uri"].value
    assert uri.startswith(f"{root}/format_benchmark/") and uri.endswith(".parquet")
    table = pq.read_table(_key(uri), filesystem=fs).to_pandas()
    assert len(table) == len(FORMATS) * (len(benchmark.ACCESS_PATTERNS) + 1)
    assert set(table["storage"]) == {"s3"} and mat.metadata["storage"].value == "s3"
    reads = table[table["access_pattern"] != "write"]
    assert set(reads["cache"]) == {benchmark.CACHE_S3}
    assert mat.metadata["cold_cache"].value.startswith("not applicable")
    io_paths = reads.groupby("format")["io_path"].agg(set).to_dict()
    assert io_paths == {
        f: {benchmark.IO_S3_IN_PLACE if f == "zarr" else benchmark.IO_S3_DOWNLOAD} for f in FORMATS
    }
    writes = table[table["access_pattern"] == "write"].set_index("format")
    assert writes.loc["zarr", "io_path"] == benchmark.IO_S3_IN_PLACE
    assert writes.loc["n5", "io_path"] == benchmark.IO_S3_STAGED_UPLOAD
    # every read returned the voxels it asked for (16 x 64 x 64 uint8 = 64 KiB per scan)
    scans = reads[reads["access_pattern"] == "sequential_scan"]
    assert np.allclose(scans["mib_per_s"] * scans["median_s"], 16 * 64 * 64 / 2**20)
    # bytes_on_disk is what the bucket holds, per an independent listing
    variants = {
        f: instance.get_latest_materialization_event(dg.AssetKey(f"volume_{f}"))
        .asset_materialization.metadata["dagster/uri"]
        .value
        for f in FORMATS
    }
    for fmt, url in variants.items():
        listed = fs.find(_key(url), detail=True) if fmt in ("zarr", "parquet", "n5") else {
            _key(url): fs.info(_key(url))}  # fmt: skip
        assert writes.loc[fmt, "bytes_on_disk"] == sum(i["size"] for i in listed.values()), fmt
    assert fs.cat_file(_key(uri[: -len(".parquet")] + ".png"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| zarr |" in fs.cat_file(_key(uri[: -len(".parquet")] + ".md")).decode()
    assert not fs.find(_key(f"{root}/format_benchmark/.write-scratch"))  # scratch removed
    (check,) = res.get_asset_check_evaluations()
    assert check.passed, check.metadata

    # --- provenance_audit: JSON + HTML objects -------------------------------------------
    res = materialize(instance, resources, ["provenance_audit"], partition="r001")
    assert res.success, failure_text(res, traceback=True)
    mat = materialization(res, "provenance_audit")
    assert mat.metadata["dagster/uri"].value.startswith(f"{root}/provenance_audit/r001/")
    report = json.loads(fs.cat_file(_key(mat.metadata["report_json"].value)))
    assert report["ok"] and {lk["asset"] for lk in report["links"]} >= {"raw_acquisition"}
    assert fs.cat_file(_key(mat.metadata["dagster/uri"].value)).startswith(b"<!DOCTYPE html>")

    # --- deposit_package: bag built in scratch, published, marker last ------------------
    res = _deposit(instance, resources)
    assert res.success, failure_text(res, traceback=True)
    mat = materialization(res, "deposit_package")
    bag_url = mat.metadata["dagster/uri"].value
    assert bag_url.startswith(f"{root}/deposit_package/") and bag_url.endswith("/bag")
    assert "marked complete" in mat.metadata["storage_mode"].value
    marker = json.loads(fs.cat_file(_key(bag_url + storage.COMPLETE_SUFFIX)))
    objects = {
        k[len(_key(bag_url)) + 1 :]: v for k, v in fs.find(_key(bag_url), detail=True).items()
    }
    assert set(marker["files"]) == set(objects)
    newest = max(v["LastModified"] for v in objects.values())
    assert fs.info(_key(bag_url + storage.COMPLETE_SUFFIX))["LastModified"] >= newest
    assert not any((base / "scratch" / "stage").iterdir())  # bounded scratch cleaned up

    # the bag's manifests equal the bytes in the bucket (hashlib over each object)
    for alg in ("sha256", "sha512"):
        for manifest in (f"manifest-{alg}.txt", f"tagmanifest-{alg}.txt"):
            lines = fs.cat_file(_key(f"{bag_url}/{manifest}")).decode().splitlines()
            assert lines
            for line in lines:
                digest, rel = line.split(None, 1)
                got = hashlib.new(alg, fs.cat_file(_key(f"{bag_url}/{rel}"))).hexdigest()
                assert got == digest, (manifest, rel)
    tag = fs.cat_file(_key(f"{bag_url}/tagmanifest-sha256.txt"))
    assert mat.tags["dagster/data_version"] == hashlib.sha256(tag).hexdigest()

    # bagit validates a downloaded copy; rocrate parses its crate
    local = base / "downloaded-bag"
    fs.get(_key(bag_url) + "/", str(local), recursive=True)
    downloaded = bagit.Bag(str(local))
    downloaded.validate()  # every sha256 and sha512
    assert set(downloaded.algorithms) == {"sha256", "sha512"}
    assert len(list((local / "data/sources/raw_acquisition/r001").glob("*.dat"))) == 16
    crate = ROCrate(str(local / "data"))
    assert crate.root_dataset["conformsTo"].id == PROCESS_RUN_CRATE
    actions = {a["name"] for a in crate.get_by_type("CreateAction")}
    assert actions == {"Materialize raw_acquisition[r001]", "Materialize raw_volume[r001]"}
    # the raw volume did not fit: its chunks are external locations in the bucket, whose
    # recorded sha256 is the object's
    ext = core_bag.read_external_manifest(local / "data" / core_bag.EXTERNAL_MANIFEST)
    assert ext and all(e.location.startswith(f"{root}/raw_volume/r001/") for e in ext)
    for e in ext[:4]:
        assert hashlib.sha256(fs.cat_file(_key(e.location))).hexdigest() == e.sha256

    # the weekly fixity checks pass: the package where it is, the sources against the
    # manifest object raw_acquisition wrote to the bucket
    ev = _check_job(instance, resources, "package_fixity_job")
    assert ev.passed, ev.description
    ev = _check_job(instance, resources, "source_fixity_job", {"dagster/partition": "r001"})
    assert ev.passed and ev.metadata["manifest"].value.startswith(f"{root}/raw_acquisition/")

    # a rerun reuses the package after validating it where it is
    again = _deposit(instance, resources)
    assert again.success
    assert materialization(again, "deposit_package").metadata["dagster/uri"].value == bag_url
    assert "reused" in materialization(again, "deposit_package").metadata["storage_mode"].value

    # --- repository_draft from the bag in the bucket (loopback fake Figshare) -----------
    server = FakeFigshare(token=TOKEN).start()
    try:
        with_api = _resources(base, landing, root, api_url=server.api_url)
        res = materialize(instance, with_api, ["repository_draft"])
        assert res.success, failure_text(res, traceback=True)
        (zipped,) = [f for f in server.files.values() if f["name"].endswith(".bag.zip")]
        with zipfile.ZipFile(io.BytesIO(zipped["blob"])) as zf:
            names = zf.namelist()
            assert "bag/tagmanifest-sha256.txt" in names
            assert zf.read("bag/tagmanifest-sha256.txt") == tag
        pkg = mat.metadata["package_id"].value
        state = json.loads(fs.cat_file(_key(f"{root}/repository_draft/{pkg}/figshare-state.json")))
        assert state["article_id"] == next(iter(server.articles))
        n_requests = len(server.log)

        # --- an object altered in the bucket: named by the fixity check, nothing uploaded ----
        victim = sorted(k for k in objects if k.startswith("data/sources/"))[2]
        data = bytearray(fs.cat_file(_key(f"{bag_url}/{victim}")))
        data[len(data) // 2] ^= 0xFF
        fs.pipe_file(_key(f"{bag_url}/{victim}"), bytes(data))
        ev = _check_job(instance, resources, "package_fixity_job")
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
        assert f"{victim}: sha256 is" in ev.description
        assert f"{victim}: sha512 is" in ev.description and bag_url in ev.description
        res = materialize(instance, with_api, ["repository_draft"])
        assert not res.success
        msg = failure_text(res, traceback=True)
        assert "nothing uploaded" in msg and victim in msg and "corrupt object" in msg
        assert len(server.log) == n_requests  # not a single request
        reuse = _deposit(instance, resources)  # reuse refuses the altered bag, naming it
        assert (
            not reuse.success
            and victim in failure_text(reuse, traceback=True)
            and "to rebuild" in failure_text(reuse, traceback=True)
        )
    finally:
        server.stop()


def test_interrupted_publication_leaves_no_marker_and_the_rerun_publishes(
    region_on_s3, monkeypatch
):
    instance, _, base, landing, _ = region_on_s3
    root = "s3://fib-assets/interrupted"
    resources = _resources(base, landing, root)
    real_put = storage._put_file
    uploads = {"n": 0}

    def put_then_fail(fs, local, remote):
        if uploads["n"] == 5:
            raise ConnectionError("connection reset by peer (injected)")
        real_put(fs, local, remote)
        uploads["n"] += 1

    monkeypatch.setattr(storage, "_put_file", put_then_fail)
    failed = _deposit(instance, resources)
    assert not failed.success and uploads["n"] == 5
    assert "injected" in failure_text(failed, traceback=True)
    (folder,) = {k.split("/", 1)[0] for k in storage.list_files(f"{root}/deposit_package")}
    bag_url = f"{root}/deposit_package/{folder}/bag"
    assert len(storage.list_files(bag_url)) == 5  # five objects, but no marker, no summary
    assert not storage.exists(bag_url + storage.COMPLETE_SUFFIX)
    assert not storage.exists(f"{root}/deposit_package/{folder}/summary.json")
    with pytest.raises(core_bag.BagInvalid, match="no completion marker"):
        core_bag.validate_bag_at(bag_url)

    monkeypatch.setattr(storage, "_put_file", real_put)
    rerun = _deposit(instance, resources)
    assert rerun.success, failure_text(rerun, traceback=True)
    assert materialization(rerun, "deposit_package").metadata["dagster/uri"].value == bag_url
    summary = core_bag.validate_bag_at(bag_url)  # streamed sha256 + sha512 of every object
    assert summary["algorithms"] == ["sha256", "sha512"] and summary["payload_files"] > 16
    marker = storage.read_json(bag_url + storage.COMPLETE_SUFFIX)
    assert set(marker["files"]) == set(storage.list_files(bag_url))


def test_source_fixity_reads_the_manifest_object_and_names_drift(region_on_s3, s3_server):
    instance, resources, _, landing, root = region_on_s3
    fs = s3_client(s3_server.endpoint_url)
    victim = sorted((landing / "r001").glob("*.dat"))[5]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
        ev = _check_job(instance, resources, "source_fixity_job", {"dagster/partition": "r001"})
        assert not ev.passed and victim.name in ev.description
    finally:
        victim.write_bytes(original)
    ev = _check_job(instance, resources, "source_fixity_job", {"dagster/partition": "r001"})
    assert ev.passed

    # the manifest object itself changed in the bucket
    manifest = ev.metadata["manifest"].value
    text = fs.cat_file(_key(manifest))
    fs.pipe_file(_key(manifest), text + b"\n")
    try:
        ev = _check_job(instance, resources, "source_fixity_job", {"dagster/partition": "r001"})
        assert not ev.passed and "changed since it was recorded" in ev.description
    finally:
        fs.pipe_file(_key(manifest), text)


def test_tables_round_trip_through_the_bucket_and_parquet_goes_last(
    s3_server, tmp_path, monkeypatch
):
    fs = s3_client(s3_server.endpoint_url)
    df = pd.DataFrame(
        {
            "experiment": ["a", "b"],
            "organelle": ["mito", "er"],
            "mean": [0.5, 0.25],
            "ci_low": [0.4, 0.2],
            "ci_high": [0.6, 0.3],
        }
    )
    md = tables.markdown_table(df, list(df.columns))
    png = tables.plot_intervals(
        df, label=["experiment", "organelle"], value="mean", low="ci_low", high="ci_high", title="t"
    )
    url = s3_server.url("tables", "segmentation_benchmark", "segmentation_benchmark-x.parquet")
    written = tables.write_table(url, df, markdown=md, png=png)
    assert written.parquet == url and written.png and written.markdown
    pd.testing.assert_frame_equal(pq.read_table(_key(url), filesystem=fs).to_pandas(), df)
    pd.testing.assert_frame_equal(tables.read_table(url), df)
    assert fs.cat_file(_key(written.markdown)).decode() == md
    image = Image.open(io.BytesIO(fs.cat_file(_key(written.png))))
    assert image.format == "PNG" and image.size[0] > 100
    for name, digest in written.sha256.items():
        assert hashlib.sha256(
            fs.cat_file(_key(url.rsplit("/", 1)[0] + "/" + name))
        ).hexdigest() == (digest)
    # the same code path on a local root
    local = tables.write_table(tmp_path / "t" / "x.parquet", df, markdown=md)
    pd.testing.assert_frame_equal(pd.read_parquet(local.parquet), df)
    assert Path(local.markdown).read_text() == md and local.png is None

    # a PNG that reads back different: a clear error naming it, and no Parquet table at all
    real_write = storage.write_bytes

    def corrupting(location, data):
        if str(location).endswith(".png"):
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        real_write(location, data)

    monkeypatch.setattr(storage, "write_bytes", corrupting)
    bad = s3_server.url("tables", "broken", "b.parquet")
    with pytest.raises(storage.StorageError, match=r"b\.png: does not read back as written"):
        tables.write_table(bad, df, markdown=md, png=png)
    assert not fs.exists(_key(bad))
    with pytest.raises(FileNotFoundError, match="b.parquet"):
        tables.read_table(bad)
