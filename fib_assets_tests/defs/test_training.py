"""The training family on a real (temporary SQLite) instance: two tiny regions with accepted
ground truth, a seeded split, a 3-step model of a test-only experiment (plus a fine-tuning of
it), predictions and segmentation of the test region."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
import zarr

from fib_assets.core import labels
from fib_assets.core.ml.experiments import ExperimentError, load_experiments
from fib_assets.definitions import defs as project_defs
from fib_assets.defs.deployment import GPU_POOL, GPU_RESOURCE
from fib_assets.defs.partitions import regions
from fib_assets.defs.training import DEFAULT_EXPERIMENT, build_defs, demo_experiments
from fib_assets.defs.training import defs as training_defs
from fib_assets.defs.training.checks import CHECKPOINT_PREDICTS, SPLIT_DISJOINT, split_problems
from fib_assets.defs.training.partitions import (
    EXPERIMENTS_ENV,
    experiments_dir,
    plan_split,
    role_targets,
)
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.dagster_helpers import failure_text, materialization, materialize

REPO = Path(__file__).resolve().parents[2]
REGIONS = ["r001", "r002"]
SHAPE = (32, 48, 48)
TRAINING_KEYS = {"training_split", "organelle_model", "predictions", "segmentation"}

TINY = {
    "name": "tiny_mito",
    "classes": ["mito", "er"],
    "preprocessing": [{"name": "percentile_stretch"}, {"name": "zscore"}],
    "architecture": {
        "levels": 2,
        "base_width": 4,
        "width_factor": 2,
        "downsample": [[2, 2, 2]],
        "padding": "valid",
    },
    "budget": {"iterations": 3, "patch_size": [8, 8, 8], "batch_size": 1},
    "optimizer": {"lr": 1.0e-3},
    "seed": 0,
}
TINY_TRANSFER = {
    **TINY,
    "name": "tiny_transfer",
    "initialization": {"from": "tiny_mito"},
    "budget": {"iterations": 2, "patch_size": [8, 8, 8], "batch_size": 1},
    "curator_intervention": "transfer_learning",
}
TINY_GPU = {**TINY, "name": "tiny_gpu", "compute": "gpu"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """Two clean tiny regions with their synthetic dense ground truth."""
    from fib_assets.core.acquisition.synthetic import write_sample

    out = tmp_path_factory.mktemp("training-sample")
    write_sample(out, n_regions=len(REGIONS), shape_zyx=SHAPE, seed=5)
    return out


@pytest.fixture()
def family(tmp_path) -> tuple[dg.Definitions, dict]:
    """The training family built from a test-only experiments folder (what
    $FIB_ASSETS_EXPERIMENTS points the code location at)."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    for exp in (TINY, TINY_TRANSFER, TINY_GPU):
        (folder / f"{exp['name']}.yaml").write_text(yaml.safe_dump(exp))
    assert experiments_dir({EXPERIMENTS_ENV: str(folder)}) == folder
    declared = load_experiments(experiments_dir({EXPERIMENTS_ENV: str(folder)}))
    return build_defs(declared), declared


def _assets(family_defs: dg.Definitions) -> list:
    """The project's assets and checks (without any training family already wired) plus the
    family under test."""
    project_assets = [
        a
        for a in project_defs.assets or []
        if isinstance(a, dg.AssetsDefinition)
        and not {k.to_user_string() for k in a.keys} & TRAINING_KEYS
    ]
    project_checks = [
        c
        for c in project_defs.asset_checks or []
        if not {k.asset_key.to_user_string() for k in c.check_keys} & TRAINING_KEYS
    ]
    return [*project_assets, *project_checks, *family_defs.assets, *family_defs.asset_checks]


def _infer(experiment: str, ops=("predictions", "segmentation")) -> dict:
    return {"ops": {op: {"config": {"experiment": experiment}} for op in ops}}


def test_definitions_describe_the_family():
    # a fresh instance: loading consults the current instance, and a test elsewhere
    # in the suite can leave a stale one behind
    with dg.instance_for_test():
        dg.Definitions.validate_loadable(
            dg.Definitions(
                assets=_assets(training_defs),
                resources=dict(project_defs.resources or {}),
            )
        )
    assets = {a.key.to_user_string(): a for a in training_defs.assets}
    assert set(assets) == TRAINING_KEYS
    for key, a in assets.items():
        spec = a.specs_by_key[a.key]
        assert spec.group_name == "training" and spec.owners == ["team:ml"], key
        assert spec.description, key
    assert set(assets["organelle_model"].specs_by_key[dg.AssetKey("organelle_model")].kinds) == {
        "pytorch"
    }
    # the repo's experiment files are the model's partitions; the GPU one is only for GPUs
    model = assets["organelle_model"]
    keys = set(model.partitions_def.get_partition_keys())
    assert {"cosem_mito_gpu", DEFAULT_EXPERIMENT, "demo_mito_transfer"} <= keys
    assert {"demo_mito_preprocessing"} <= keys
    k8s = json.loads(model.op.tags["dagster-k8s/config"])  # op tags are stored as JSON
    assert k8s["container_config"]["resources"]["limits"][GPU_RESOURCE] == "1"
    assert model.op.pool == GPU_POOL
    assert demo_experiments(environ={}) == ["demo_mito_scratch", "demo_mito_transfer"]
    with pytest.raises(ValueError, match="need a GPU"):
        demo_experiments(environ={"FIB_ASSETS_DEMO_EXPERIMENTS": "cosem_mito_gpu"})


def test_experiment_files_are_validated_with_clear_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**TINY, "budget": {"iterations": 0}}))
    with pytest.raises(ExperimentError, match=r"bad\.yaml: key 'budget\.patch_size'"):
        load_experiments(tmp_path)
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({**TINY, "initialization": {"from": "nowhere"}})
    )
    with pytest.raises(ExperimentError, match="unknown experiment 'nowhere'"):
        load_experiments(tmp_path)
    cosem = load_experiments(REPO / "experiments")["cosem_mito_gpu"]
    assert cosem.architecture["downsample"] == [[2, 2, 2], [3, 3, 3], [3, 3, 3]]
    assert cosem.optimizer["lr"] == 5e-5 and cosem.compute == "gpu"


def test_split_is_seeded_sticky_and_leak_aware():
    names = [f"r{i:03d}" for i in range(1, 11)]
    first = plan_split(names, seed=3, test_fraction=0.3, validation_fraction=0.2)
    assert first == plan_split(names, seed=3, test_fraction=0.3, validation_fraction=0.2)
    assert (
        sorted(first.values()).count("test") == 3 and list(first.values()).count("validation") == 2
    )
    # new regions never move an existing region out of its role
    more = plan_split(
        [*names, "r011", "r012"],
        seed=3,
        test_fraction=0.3,
        validation_fraction=0.2,
        previous=first,
    )
    assert {r: more[r] for r in names} == first
    assert role_targets(2, 0.3, 0.2) == {"train": 1, "validation": 0, "test": 1}
    assert role_targets(3, 0.3, 0.2) == {"train": 2, "validation": 0, "test": 1}
    test_region = next(r for r, role in first.items() if role == "test")
    assert not split_problems(first, {"m": [r for r, v in first.items() if v == "train"]})
    assert split_problems(first, {"m": [test_region]}) == [
        f"organelle_model[m] was trained on current test regions ['{test_region}']"
    ]


def test_split_model_predictions_and_segmentation(tmp_path, sample, family):
    family_defs, declared = family
    assets = _assets(family_defs)
    landing = tmp_path / "landing"
    shutil.copytree(sample / "landing", landing)
    resources = code_location_resources(tmp_path, landing)
    storage = Path(resources["storage"].root)
    with warnings.catch_warnings(), dg.instance_for_test() as instance:
        warnings.simplefilter("ignore")
        instance.add_dynamic_partitions(regions.name, REGIONS)
        for i, region in enumerate(REGIONS):
            labels.deliver_synthetic_annotations(
                sample / "groundtruth" / f"{region}.zarr",
                resources["annotations"].inbox,
                region,
                raw_voxel_size_nm=8.0,
                n_crops=3,
                crop_shape=(16, 16, 16),
                seed=i,
            )
            upstream = materialize(
                instance,
                resources,
                ["raw_acquisition", "raw_volume", "volume_zarr", "ground_truth_crops"],
                region,
                {"ops": {"volume_zarr": {"config": {"chunk_size": 16}}}},
                assets=assets,
            )
            assert upstream.success, failure_text(upstream)

        # a seeded split of the two regions: one trains, one is held out for testing
        split = materialize(instance, resources, ["training_split"], assets=assets)
        assert split.success, failure_text(split)
        (check,) = split.get_asset_check_evaluations()
        assert check.check_name == SPLIT_DISJOINT and check.passed
        meta = materialization(split, "training_split").metadata
        assignment = meta["assignment"].value
        assert sorted(assignment) == REGIONS and sorted(assignment.values()) == ["test", "train"]
        (train_region,) = meta["train_regions"].value
        (test_region,) = meta["test_regions"].value
        assert "| region | role |" in meta["split"].value and f"| {test_region} | **test**" in (
            meta["split"].value
        )

        # a 3-step model: checkpoint + model card, data version = sha256 of the checkpoint
        trained = materialize(instance, resources, ["organelle_model"], "tiny_mito", assets=assets)
        assert trained.success, failure_text(trained)
        mat = materialization(trained, "organelle_model")
        ckpt = Path(mat.metadata["checkpoint"].value)
        assert ckpt.is_file() and ckpt.parent.parent == storage / "organelle_model" / "tiny_mito"
        sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert mat.tags["dagster/data_version"] == sha == mat.metadata["checkpoint_sha256"].value
        card = json.loads((ckpt.parent / "model_card.json").read_text())
        assert card["iterations"] == 3 and card["device"] == "cpu"
        assert card["iterations_per_s"] > 0 and card["wall_time_s"] > 0
        assert card["architecture"]["levels"] == 2 and card["parameters"] > 0
        assert card["regions_by_role"]["train"] == [train_region]
        assert test_region not in card["training_data"]["regions"]
        current = labels.RevisionStore(storage / "ground_truth_crops" / train_region).current()
        versions = mat.metadata["data_versions"].value
        assert versions[f"{train_region}:ground_truth_crops"] == current.data_version
        assert versions[f"{train_region}:volume_zarr"]
        assert (
            versions["training_split"]
            == materialization(split, "training_split").tags["dagster/data_version"]
        )
        assert card["metrics"]["validation_dice"] is not None  # the held-out crop of train
        assert "| classes | mito, er |" in mat.metadata["model_card"].value
        checks = {e.check_name: e for e in trained.get_asset_check_evaluations()}
        assert checks[CHECKPOINT_PREDICTS].passed

        # fine-tuning records where it started from
        tuned = materialize(
            instance, resources, ["organelle_model"], "tiny_transfer", assets=assets
        )
        assert tuned.success, failure_text(tuned)
        tuned_card = json.loads(
            (
                Path(materialization(tuned, "organelle_model").metadata["dagster/uri"].value)
                / "model_card.json"
            ).read_text()
        )
        assert tuned_card["initialization"]["experiment"] == "tiny_mito"
        assert tuned_card["initialization"]["checkpoint_sha256"] == sha

        # a GPU experiment on this CPU machine fails at once, saying where it runs
        gpu = materialize(instance, resources, ["organelle_model"], "tiny_gpu", assets=assets)
        assert not gpu.success and "GPU node pool" in failure_text(gpu)

        # predictions + segmentation of the test region with the tiny model
        inferred = materialize(
            instance,
            resources,
            ["predictions", "segmentation"],
            test_region,
            _infer("tiny_mito"),
            assets=assets,
        )
        assert inferred.success, failure_text(inferred)
        pred = materialization(inferred, "predictions").metadata
        assert pred["checkpoint_sha256"].value == sha
        assert "data:image/png;base64" in pred["preview"].value
        container = Path(pred["dagster/uri"].value)
        for cls in ("mito", "er"):
            arr = zarr.open_array(str(container / "predictions" / cls / "s0"), mode="r")
            assert arr.shape == SHAPE and arr.dtype == np.uint8
        seg = materialization(inferred, "segmentation").metadata
        assert seg["region_role"].value == "test" and seg["test_region"].value is True
        for cls in ("mito", "er"):
            assert 0.0 <= seg[f"dice_{cls}"].value <= 1.0
        inst = zarr.open_array(
            str(Path(seg["dagster/uri"].value) / "instances" / "mito" / "s0"), mode="r"
        )
        assert inst.shape == SHAPE and inst.dtype == np.uint64
        assert int(np.asarray(inst[...]).max()) == seg["instances_mito"].value
        assert {e.check_name: e.passed for e in inferred.get_asset_check_evaluations()} == {
            "prediction_complete": True
        }

        # rerun: every block is already done, nothing is recomputed
        again = materialize(
            instance,
            resources,
            ["predictions"],
            test_region,
            _infer("tiny_mito", ["predictions"]),
            assets=assets,
        )
        assert again.success
        assert materialization(again, "predictions").metadata["blocks_computed"].value == 0

        # segmentation of an experiment whose predictions do not exist fails clearly
        missing = materialize(
            instance,
            resources,
            ["segmentation"],
            test_region,
            _infer("tiny_transfer", ["segmentation"]),
            assets=assets,
        )
        assert not missing.success and "no materialization with experiment" in failure_text(missing)

        # the demo's training step: reuses the split and both models, segments the test region
        # with tiny_transfer (new) and reuses tiny_mito's segmentation (same checkpoint)
        from fib_assets.demo import materialize_training

        demo_defs = dg.Definitions(assets=assets, resources=resources)
        first = materialize_training(demo_defs, instance, ["tiny_mito", "tiny_transfer"])
        assert first.split["test"] == [test_region] and first.split["train"] == [train_region]
        assert first.models == {"tiny_mito": "reused", "tiny_transfer": "reused"}
        assert first.segmentations == {
            f"tiny_mito/{test_region}": "reused",
            f"tiny_transfer/{test_region}": "ok",
        }
        assert first.test_dice["tiny_mito"][test_region] == {
            cls: seg[f"dice_{cls}"].value for cls in ("mito", "er")
        }
        assert set(first.test_dice["tiny_transfer"][test_region]) == {"mito", "er"}
        assert first.cpu_seconds > 0
        second = materialize_training(demo_defs, instance, ["tiny_mito", "tiny_transfer"])
        assert set(second.segmentations.values()) == {"reused"}
        assert second.test_dice == first.test_dice

        # the evaluation tables of [E] over the same instance, built for the test experiments
        from fib_assets.defs.benchmarks.evaluation import build_evaluation_assets
        from fib_assets.demo import materialize_evaluation

        evaluation_assets = build_evaluation_assets(declared)
        eval_keys = {k for a in evaluation_assets for k in a.keys}
        eval_defs = dg.Definitions(
            assets=[
                a
                for a in assets
                if not (isinstance(a, dg.AssetsDefinition) and set(a.keys) & eval_keys)
            ]
            + evaluation_assets,
            resources=resources,
        )
        tables_out = materialize_evaluation(eval_defs, instance, [test_region])
        assert set(tables_out["states"].values()) == {"ok"}, tables_out["states"]
        seg_bench = tables_out["headline"]["segmentation_benchmark"]
        dice = seg_bench[seg_bench.metric == "dice"].set_index(["experiment", "organelle"])
        # core/metrics (evaluation) and core/ml (segmentation metadata) pool the same crops
        for exp, per_region in first.test_dice.items():
            for cls, value in per_region[test_region].items():
                assert dice.loc[(exp, cls), "mean"] == pytest.approx(value)
                assert dice.loc[(exp, cls), "n_regions"] == 1
        gains = tables_out["headline"]["intervention_benchmark"].set_index("organelle")
        assert set(gains["experiment"]) == {"tiny_transfer"}
        assert gains.loc["mito", "gain"] == pytest.approx(
            dice.loc[("tiny_transfer", "mito"), "mean"] - dice.loc[("tiny_mito", "mito"), "mean"]
        )
        infra = tables_out["headline"]["infrastructure_benchmark"]
        n_models = len(instance.fetch_materializations(dg.AssetKey("organelle_model"), 100).records)
        n_preds = len(instance.fetch_materializations(dg.AssetKey("predictions"), 100).records)
        assert len(infra) == n_models + n_preds
        assert set(infra["infrastructure"]) == {"local_cpu"}
        assert (infra["cost_usd"] > 0).all()
        # a training region gets no evaluation rows (its score would be biased)
        train_eval = materialize(
            instance, resources, ["evaluation"], train_region, assets=eval_defs.assets
        )
        assert (
            train_eval.success
            and materialization(train_eval, "evaluation").metadata["dagster/row_count"].value == 0
        )
        # asking the benchmark for more test regions than exist fails its check
        too_many = materialize(
            instance, resources, ["segmentation_benchmark"], None,
            {"ops": {"segmentation_benchmark": {"config": {"n_regions": 3}}}},
            assets=eval_defs.assets,
        )  # fmt: skip
        assert too_many.success
        assert not [e for e in too_many.get_asset_check_evaluations()][0].passed

        # one simulated correction round on the training region (curation family): tasks avoid
        # the region's test crops, corrections arrive in the inbox with the effort model's
        # minutes, and ground_truth_crops turns them into the next accepted revision
        before = labels.RevisionStore(storage / "ground_truth_crops" / train_region).current()
        pred = materialize(
            instance,
            resources,
            ["predictions"],
            train_region,
            _infer("tiny_mito", ["predictions"]),
            assets=eval_defs.assets,
        )
        assert pred.success
        tasks_run = materialize(
            instance, resources, ["proofreading_tasks"], train_region,
            {"ops": {"proofreading_tasks": {"config": {"k": 2, "block_edge": 8}}}},
            assets=eval_defs.assets,
        )  # fmt: skip
        assert tasks_run.success, failure_text(tasks_run)
        from fib_assets.core.curation.tasks import TaskList

        task_list = TaskList.load(
            str(materialization(tasks_run, "proofreading_tasks").metadata["dagster/uri"].value)
        )
        assert len(task_list.tasks) == 2
        held_out = [c.roi for c in before.crops if c.split != "train"]
        for task in task_list.tasks:
            assert all(task.roi.intersect(t).size == 0 for t in held_out)
            assert Path(task.container).is_dir()
        sim = materialize(
            instance, resources, ["simulated_corrections"], train_region,
            {"ops": {"simulated_corrections": {"config": {
                "truth_dir": str(sample / "groundtruth"), "correction_round": 1}}}},
            assets=eval_defs.assets,
        )  # fmt: skip
        assert sim.success, failure_text(sim)
        sim_meta = materialization(sim, "simulated_corrections").metadata
        assert sim_meta["curator_minutes"].value > 0
        gt = materialize(
            instance, resources, ["ground_truth_crops"], train_region, assets=eval_defs.assets
        )
        assert gt.success, failure_text(gt)
        after = labels.RevisionStore(storage / "ground_truth_crops" / train_region).current()
        assert after.number > before.number
        new_crops = {c.name for c in after.crops} - {c.name for c in before.crops}
        assert new_crops == {t.task_id for t in task_list.tasks}
        # the corrected crops hold the held-out truth at the task ROIs
        import zarr as zarr_

        truth = zarr_.open_array(str(sample / "groundtruth" / f"{train_region}.zarr"), mode="r")
        for task in task_list.tasks:
            np.testing.assert_array_equal(
                after.read_crop(task.task_id), np.asarray(truth[task.roi.to_slices()])
            )
        assert sum(
            float(c.minutes_spent or 0) for c in after.crops if c.name in new_crops
        ) == pytest.approx(sim_meta["curator_minutes"].value)


def test_training_resumes_after_a_crash_and_selects_on_validation(tmp_path):
    """The training loop (no Dagster): a run killed after its first selection point resumes
    from ``latest.pt``; the selected checkpoint is the best-scoring one on validation crops."""
    from fib_assets.core.formats.base import ArraySource
    from fib_assets.core.geometry import Roi, VoxelSize
    from fib_assets.core.ml.crops import CropSetSampler, EvalCrop
    from fib_assets.core.ml.experiments import Experiment
    from fib_assets.core.ml.preprocess import Pipeline, PreprocessedVolume
    from fib_assets.core.ml.train import build_sampler, read_checkpoint
    from fib_assets.core.ml.training_run import selection_points, train_with_selection

    rng = np.random.default_rng(0)
    lab = np.zeros((24, 24, 24), dtype=np.uint8)
    lab[4:14, 4:14, 4:14] = 4  # a mito lumen block
    lab[lab == 0] = 35  # cytosol
    raw = ArraySource(
        (np.where(lab == 4, 60, 180) + rng.integers(0, 20, lab.shape)).astype(np.uint8),
        VoxelSize.isotropic(8.0),
    )
    config = Experiment.from_dict({**TINY, "classes": ["mito"]}).train_config()
    pipeline = Pipeline.from_dict(config.preprocessing).fit(raw)
    crop = ArraySource(lab, raw.info.voxel_size)
    sampler = CropSetSampler([("r/c", build_sampler(config, raw, crop, pipeline=pipeline))])
    validation = [
        EvalCrop("r/v", PreprocessedVolume(raw, pipeline), Roi((0, 0, 0), lab.shape), lab)
    ]
    staging = tmp_path / "staging"
    first = train_with_selection(
        config.replace(iterations=2), sampler, validation, staging, n_points=2, log=lambda _: None
    )
    assert first.iterations == 2 and [p["step"] for p in first.selection] == [1, 2]
    # killed after step 2 was saved but before it was scored: a larger budget resumes there
    state = json.loads((staging / "selection.json").read_text())
    state["points"] = state["points"][:1]
    (staging / "selection.json").write_text(json.dumps(state))
    resumed = train_with_selection(
        config.replace(iterations=4), sampler, validation, staging, n_points=2, log=lambda _: None
    )
    assert resumed.resumed_from_step == 2 and resumed.steps_this_run == 2
    assert resumed.iterations == 4 and [p["step"] for p in resumed.selection] == [1, 2, 4]
    best = max(resumed.selection, key=lambda p: p["mean_dice"])
    assert resumed.selected_step == best["step"]
    assert read_checkpoint(resumed.checkpoint)["step"] == best["step"]
    assert len(list(staging.glob("best-*.pt"))) == 1
    assert selection_points(240, 5) == [48, 96, 144, 192, 240]
