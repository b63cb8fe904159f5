"""The ground-truth and training families on an ``s3://`` storage root, against a real
S3-protocol server (moto on loopback), through Dagster's own materialize path: raw ->
volume_zarr -> ground_truth_crops -> training_split -> organelle_model (a tiny experiment and a
fine-tuning of it, initialised from the published S3 checkpoint) -> predictions ->
segmentation. Objects are read back with independent readers (zarr-python over our own s3fs,
tensorstore's s3 driver, pyarrow, torch.load of a downloaded checkpoint) and compared with what a
local-root run of the same code produces. Failures: a model publish interrupted mid-upload and a
prediction block that fails leave no completion marker, and the reruns finish the job."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorstore as ts
import torch
import yaml
import zarr
from zarr.storage import FsspecStore

from fib_assets.core import labels, storage
from fib_assets.core.ml.evaluate import segment_predictions
from fib_assets.core.ml.experiments import load_experiments
from fib_assets.core.ml.predict import plan_prediction, predict_volume, read_array
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource
from fib_assets.defs.training import build_defs
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.dagster_helpers import failure_text, materialization, materialize, metadata_of
from fib_assets_tests.defs.test_training import TINY, TINY_TRANSFER, _assets
from fib_assets_tests.deploy.conftest import s3_client

pytestmark = pytest.mark.s3

REGION = "r001"
SHAPE = (32, 48, 48)
CLASSES = ("mito", "er")
UPSTREAM = ["raw_acquisition", "raw_volume", "volume_zarr", "ground_truth_crops"]
SMALL_ZARR = {"ops": {"volume_zarr": {"config": {"chunk_size": 16}}}}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """One clean tiny region with its synthetic dense ground truth."""
    from fib_assets.core.acquisition.synthetic import write_sample

    out = tmp_path_factory.mktemp("downstream-sample")
    write_sample(out, n_regions=1, shape_zyx=SHAPE, seed=5)
    return out


def _family(tmp_path: Path) -> list:
    folder = tmp_path / "experiments"
    folder.mkdir()
    for exp in (TINY, TINY_TRANSFER):
        (folder / f"{exp['name']}.yaml").write_text(yaml.safe_dump(exp))
    return _assets(build_defs(load_experiments(folder)))


def _resources(tmp_path: Path, sample: Path, root: str, name: str) -> dict:
    """The code location's resources with their own landing copy and annotations inbox (a
    filesystem path even for an s3:// root) holding the same synthetic deliveries."""
    base = tmp_path / name
    landing = base / "landing"
    shutil.copytree(sample / "landing", landing)
    res = code_location_resources(base, landing)
    res["storage"] = StorageResource(root=root, landing_zone=str(landing))
    labels.deliver_synthetic_annotations(
        sample / "groundtruth" / f"{REGION}.zarr",
        res["annotations"].inbox,
        REGION,
        raw_voxel_size_nm=8.0,
        n_crops=3,
        crop_shape=(16, 16, 16),
        seed=0,
    )
    return res


def _key(url: str) -> str:
    return url.removeprefix("s3://")


def _zarr_array(endpoint: str, url: str) -> np.ndarray:
    store = FsspecStore(fs=s3_client(endpoint, asynchronous=True), path=_key(url), read_only=True)
    return np.asarray(zarr.open_array(store, mode="r")[...])


def _ts_array(s3_server, url: str) -> np.ndarray:
    key = _key(url).split("/", 1)[1]
    spec = {
        "driver": "zarr3",
        "kvstore": {
            "driver": "s3",
            "bucket": s3_server.bucket,
            "endpoint": s3_server.endpoint_url,
            "path": key.rstrip("/") + "/",
        },
    }
    return np.asarray(ts.open(spec, read=True).result().read().result())


def test_downstream_families_on_s3_match_a_local_run_and_independent_readers(
    s3_server, tmp_path, sample, scratch, monkeypatch
):
    assets = _family(tmp_path)
    root = s3_server.url("downstream")
    fs = s3_client(s3_server.endpoint_url)
    remote = _resources(tmp_path, sample, root, "s3run")
    local = _resources(tmp_path, sample, str(tmp_path / "local" / "storage"), "localrun")
    ops = ("predictions", "segmentation")
    infer = {"ops": {op: {"config": {"experiment": "tiny_mito"}} for op in ops}}
    infer["ops"]["predictions"]["config"]["block_edge"] = 24  # 2 x 2 x 2 blocks
    with (
        warnings.catch_warnings(),
        dg.instance_for_test() as instance,
        dg.instance_for_test() as li,
    ):
        warnings.simplefilter("ignore")
        for inst in (instance, li):
            inst.add_dynamic_partitions(regions.name, [REGION])

        # --- ground truth: the same revision (same data version) as on a local root ----------
        up = materialize(instance, remote, UPSTREAM, REGION, SMALL_ZARR, assets=assets)
        assert up.success, failure_text(up, traceback=True)
        local_up = materialize(li, local, UPSTREAM, REGION, SMALL_ZARR, assets=assets)
        assert local_up.success, failure_text(local_up, traceback=True)
        gt = metadata_of(up, "ground_truth_crops")
        rev_url = gt["dagster/uri"]
        assert rev_url == f"{root}/ground_truth_crops/{REGION}/rev-0001"
        assert (
            materialization(up, "ground_truth_crops").tags["dagster/data_version"]
            == materialization(local_up, "ground_truth_crops").tags["dagster/data_version"]
        )
        assert all(e.passed for e in up.get_asset_check_evaluations())
        assert not (tmp_path / "s3run" / "storage").exists()  # nothing went to a local root
        # published with its marker (manifest of sizes and sha256), current.json beside it
        marker = json.loads(fs.cat_file(_key(rev_url + storage.COMPLETE_SUFFIX)))
        assert "revision.json" in marker["files"] and "label_stats.parquet" in marker["files"]
        current = json.loads(fs.cat_file(_key(f"{root}/ground_truth_crops/{REGION}/current.json")))
        assert current["revision"] == 1
        # every crop, read with zarr-python over our own s3fs, is the synthetic truth at its ROI
        truth = zarr.open_array(str(sample / "groundtruth" / f"{REGION}.zarr"), mode="r")
        revision = json.loads(fs.cat_file(_key(f"{rev_url}/revision.json")))
        assert len(revision["crops"]) == gt["n_crops"] == 3
        for crop in revision["crops"]:
            roi = crop["roi_raw_voxels"]
            sl = tuple(slice(o, o + s) for o, s in zip(roi["offset"], roi["shape"], strict=True))
            got = _zarr_array(s3_server.endpoint_url, f"{rev_url}/crops.zarr/{crop['name']}")
            np.testing.assert_array_equal(got, np.asarray(truth[sl]))
        stats = pq.read_table(io.BytesIO(fs.cat_file(_key(f"{rev_url}/label_stats.parquet"))))
        assert int(stats.to_pandas().query("class_id != 0")["voxels"].sum()) == int(
            gt["annotated_voxels"]
        )

        # --- a tiny model, and a fine-tuning initialised from its S3 checkpoint ---------------
        split = materialize(instance, remote, ["training_split"], assets=assets)
        assert split.success, failure_text(split, traceback=True)
        trained = materialize(instance, remote, ["organelle_model"], "tiny_mito", assets=assets)
        assert trained.success, failure_text(trained, traceback=True)
        model = metadata_of(trained, "organelle_model")
        ckpt = model["checkpoint"]
        sha = model["checkpoint_sha256"]
        assert ckpt == f"{root}/organelle_model/tiny_mito/{sha[:16]}/model.pt"
        assert materialization(trained, "organelle_model").tags["dagster/data_version"] == sha
        assert {e.check_name: e.passed for e in trained.get_asset_check_evaluations()} == {
            "checkpoint_loads_and_predicts_finite": True
        }
        downloaded = tmp_path / "model.pt"
        fs.get_file(_key(ckpt), str(downloaded))
        assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == sha
        state = torch.load(downloaded, map_location="cpu", weights_only=True)
        assert state["step"] == model["selected_step"] and state["model"]  # the selected one
        folder = ckpt.rsplit("/", 1)[0]
        folder_marker = json.loads(fs.cat_file(_key(folder + storage.COMPLETE_SUFFIX)))
        assert folder_marker["files"]["model.pt"]["sha256"] == sha
        card = json.loads(fs.cat_file(_key(f"{folder}/model_card.json")))
        assert card["checkpoint"] == ckpt and card["checkpoint_sha256"] == sha
        assert json.loads(fs.cat_file(_key(f"{root}/organelle_model/tiny_mito/current.json"))) == {
            "checkpoint": ckpt,
            "sha256": sha,
        }
        # the training state mirror is gone once the model is published
        assert not [k for k in fs.ls(_key(f"{root}/organelle_model/tiny_mito")) if ".train-" in k]

        tuned = materialize(instance, remote, ["organelle_model"], "tiny_transfer", assets=assets)
        assert tuned.success, failure_text(tuned, traceback=True)
        tuned_card = json.loads(
            fs.cat_file(
                _key(f"{metadata_of(tuned, 'organelle_model')['dagster/uri']}/model_card.json")
            )
        )
        assert tuned_card["initialization"]["checkpoint"] == ckpt
        assert tuned_card["initialization"]["checkpoint_sha256"] == sha

        # --- predictions and segmentation, equal to a local run with the same checkpoint ------
        inferred = materialize(
            instance, remote, ["predictions", "segmentation"], REGION, infer, assets=assets
        )
        assert inferred.success, failure_text(inferred, traceback=True)
        pred = metadata_of(inferred, "predictions")
        pred_url = pred["dagster/uri"]
        assert pred_url.startswith(f"{root}/predictions/{REGION}/") and pred["checkpoint"] == ckpt
        assert fs.exists(_key(pred_url + storage.COMPLETE_SUFFIX))
        assert all(e.passed for e in inferred.get_asset_check_evaluations())
        local_raw = metadata_of(local_up, "volume_zarr")["dagster/uri"]
        plan = plan_prediction(
            downloaded, local_raw, tmp_path / "local-pred.zarr", block_shape=pred["block_shape"]
        )
        predict_volume(plan)
        for cls in CLASSES:
            on_s3 = _ts_array(s3_server, f"{pred_url}/predictions/{cls}/s0")
            assert on_s3.shape == SHAPE and on_s3.dtype == np.uint8
            np.testing.assert_array_equal(on_s3, read_array(plan.out_path, f"predictions/{cls}"))
        seg = metadata_of(inferred, "segmentation")
        seg_url = seg["dagster/uri"]
        assert fs.exists(_key(seg_url + storage.COMPLETE_SUFFIX))
        assert "uploaded, read back" in seg["storage_mode"]
        local_seg = segment_predictions(
            Path(plan.out_path), tmp_path / "local-seg.zarr", "same-predictions"
        )
        for cls in CLASSES:
            on_s3 = _zarr_array(s3_server.endpoint_url, f"{seg_url}/instances/{cls}/s0")
            np.testing.assert_array_equal(
                on_s3, read_array(tmp_path / "local-seg.zarr", f"instances/{cls}")
            )
            assert int(on_s3.max()) == seg[f"instances_{cls}"] == local_seg.counts[cls]
            assert 0.0 <= seg[f"dice_{cls}"] <= 1.0

        # --- one correction round: tasks published on S3, corrections via the (local) inbox ---
        tasks_run = materialize(
            instance, remote, ["proofreading_tasks"], REGION,
            {"ops": {"proofreading_tasks": {"config": {"k": 1, "block_edge": 8}}}}, assets=assets,
        )  # fmt: skip
        assert tasks_run.success, failure_text(tasks_run, traceback=True)
        task_dir = metadata_of(tasks_run, "proofreading_tasks")["dagster/uri"]
        assert task_dir.startswith(f"{root}/proofreading_tasks/{REGION}/")
        assert fs.exists(_key(task_dir + storage.COMPLETE_SUFFIX))
        (task,) = json.loads(fs.cat_file(_key(f"{task_dir}/tasks.json")))["tasks"]
        assert task["container"] == f"{task_dir}/{task['task_id']}.n5"
        n5 = _key(task["container"]).split("/", 1)[1] + "/volumes/raw/s0/"
        raw_ctx = ts.open({"driver": "n5", "kvstore": {
            "driver": "s3", "bucket": s3_server.bucket, "endpoint": s3_server.endpoint_url,
            "path": n5}}).result()  # fmt: skip
        assert tuple(raw_ctx.shape) == tuple(reversed(task["roi_voxels"]["shape"]))
        sim = materialize(
            instance, remote, ["simulated_corrections"], REGION,
            {"ops": {"simulated_corrections": {"config": {
                "truth_dir": str(sample / "groundtruth")}}}}, assets=assets,
        )  # fmt: skip
        assert sim.success, failure_text(sim, traceback=True)
        second = materialize(instance, remote, ["ground_truth_crops"], REGION, assets=assets)
        assert second.success, failure_text(second, traceback=True)
        assert metadata_of(second, "ground_truth_crops")["dagster/uri"].endswith("/rev-0002")
        roi = task["roi_voxels"]
        sl = tuple(slice(o, o + n) for o, n in zip(roi["offset"], roi["shape"], strict=True))
        np.testing.assert_array_equal(
            _zarr_array(
                s3_server.endpoint_url,
                f"{root}/ground_truth_crops/{REGION}/rev-0002/crops.zarr/{task['task_id']}",
            ),
            np.asarray(truth[sl]),
        )

        # --- block markers are objects: a new pod (empty scratch) redoes only missing blocks --
        ledger = f"{root}/predictions/{REGION}/.{pred_url.rsplit('/', 1)[1]}.blocks"
        markers = sorted(k for k in fs.find(_key(ledger)) if "/predict-" in k)
        assert len(markers) == pred["blocks_total"] > 1
        fs.rm(markers[:2])
        shutil.rmtree(scratch, ignore_errors=True)
        again = materialize(instance, remote, ["predictions"], REGION,
                            {"ops": {"predictions": infer["ops"]["predictions"]}},
                            assets=assets)  # fmt: skip
        assert again.success, failure_text(again, traceback=True)
        assert metadata_of(again, "predictions")["blocks_computed"] == 2
        np.testing.assert_array_equal(
            _ts_array(s3_server, f"{pred_url}/predictions/mito/s0"),
            read_array(plan.out_path, "predictions/mito"),
        )

        # --- a model publish interrupted mid-upload leaves no marker; the old model stays ----
        real_put = storage._put_file

        def die_at_the_card(fs_, local_file, remote_key):
            if remote_key.endswith("model_card.json"):
                raise OSError("connection reset (injected)")
            real_put(fs_, local_file, remote_key)

        monkeypatch.setattr(storage, "_put_file", die_at_the_card)
        retrain = {"ops": {"organelle_model": {"config": {"iterations": 2}}}}
        failed = materialize(
            instance, remote, ["organelle_model"], "tiny_mito", retrain, assets=assets
        )
        assert not failed.success and "connection reset" in failure_text(failed, traceback=True)
        exp = f"{root}/organelle_model/tiny_mito"
        half = [n for n in storage.list_names(exp) if len(n) == 16 and n != sha[:16]]
        assert len(half) == 1  # the new model's folder, with its checkpoint uploaded ...
        assert storage.exists(f"{exp}/{half[0]}/model.pt")
        assert not storage.is_complete(f"{exp}/{half[0]}")  # ... but never marked complete
        with pytest.raises(FileNotFoundError, match="no completion marker"):
            storage.fetch(f"{exp}/{half[0]}/model.pt")
        assert json.loads(fs.cat_file(_key(f"{exp}/current.json")))["sha256"] == sha
        # the training state was mirrored (marker last) after each selection point
        (mirror,) = [
            n
            for n in storage.list_names(exp)
            if n.startswith(".train-") and not n.endswith(storage.COMPLETE_SUFFIX)
        ]
        assert storage.is_complete(f"{exp}/{mirror}")
        monkeypatch.setattr(storage, "_put_file", real_put)
        shutil.rmtree(scratch, ignore_errors=True)  # a new pod: the local training folder is gone
        healed = materialize(
            instance, remote, ["organelle_model"], "tiny_mito", retrain, assets=assets
        )
        assert healed.success, failure_text(healed, traceback=True)
        healed_dir = metadata_of(healed, "organelle_model")["dagster/uri"]
        assert storage.is_complete(healed_dir) and healed_dir.endswith(half[0])
        healed_card = json.loads(fs.cat_file(_key(f"{healed_dir}/model_card.json")))
        assert healed_card["resumed_from_step"] == 2  # resumed from the mirror, not retrained
        assert not [n for n in storage.list_names(exp) if n.startswith(".train-")]

        # --- a failing block is never marked done, and the container never complete -----------
        out = f"{root}/predictions/{REGION}/failing.zarr"
        raw_url = metadata_of(up, "volume_zarr")["dagster/uri"]
        failing = plan_prediction(ckpt, raw_url, out, block_shape=pred["block_shape"])
        seen: list[str] = []

        def fail_second(block):
            seen.append(block.block_id)
            if len(seen) == 2:
                raise RuntimeError("node lost (injected)")

        with pytest.raises(RuntimeError, match="node lost"):
            predict_volume(failing, block_hook=fail_second)
        done = [k.rsplit("/", 1)[1] for k in fs.find(_key(f"{root}/predictions/{REGION}/"
                                                          ".failing.zarr.blocks"))]  # fmt: skip
        assert done == [f"predict-{seen[0]}.done.json"]
        assert not storage.is_complete(out)
        shutil.rmtree(scratch, ignore_errors=True)
        rerun = predict_volume(failing)
        assert rerun.blocks_computed == rerun.blocks_total - 1 and storage.is_complete(out)
        np.testing.assert_array_equal(
            _ts_array(s3_server, f"{out}/predictions/er/s0"),
            read_array(plan.out_path, "predictions/er"),
        )


def test_an_object_store_annotations_inbox_is_refused_clearly(s3_server):
    from fib_assets.defs.ground_truth.resources import AnnotationsResource

    with pytest.raises(storage.StorageError, match="annotations inbox must be a filesystem"):
        AnnotationsResource(inbox=s3_server.url("inbox")).region_inbox(REGION)
    # a checkpoint URL without a published model folder is named
    with pytest.raises(FileNotFoundError, match="no completion marker"):
        storage.fetch(s3_server.url("nowhere", "0123456789abcdef", "model.pt"))
