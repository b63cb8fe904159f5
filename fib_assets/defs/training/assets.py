"""Training family: which regions train, validate and test; one model per declared experiment;
blockwise predictions and segmentations of regions with a chosen model.

Lineage::

    ground_truth_crops[all regions] ──────────────────> training_split
    training_split, ground_truth_crops + volume_zarr[all regions] ─> organelle_model[experiment]
    organelle_model[all experiments], volume_zarr[region] ──> predictions[region]
    predictions[region], ground_truth_crops[region], training_split ─> segmentation[region]

``organelle_model`` is partitioned by experiment (static partitions from ``experiments/``) and
reads every region it trains on, so its dependencies on region-partitioned assets use
``AllPartitionMapping``. ``predictions``/``segmentation`` are per region and use the model of
the experiment named in their config (default :data:`DEFAULT_EXPERIMENT`): they depend on all
``organelle_model`` partitions for the same reason, and read the chosen one's checkpoint from
its latest materialization.

**GPU placement.** ``op_tags`` and pools belong to an asset definition, not to a partition, so
``organelle_model`` as a whole carries the GPU tags (``nvidia.com/gpu`` limit, GPU node
selector and toleration, see :mod:`fib_assets.defs.deployment`) and ``pool="gpu"``. Every
experiment trains in that step: a ``compute: cpu`` experiment on Kubernetes also lands on a
GPU node (the tiny demo models do not mind), and locally the ``gpu`` pool lets one training
run at a time once its limit is set (``dagster instance concurrency set gpu 1``, or
``concurrency.pools`` in dagster.yaml). Two assets (a CPU and a GPU model asset) would put
each experiment on the right hardware but split one kind of data across two keys and make
every consumer look in both; one asset keeps one lineage per model, which is what curators
audit. A ``compute: gpu`` experiment on a machine without CUDA fails at once with a clear
error.

The science lives in :mod:`fib_assets.core.ml` (``crops``: training and evaluation data from
ground-truth crops; ``training_run``: training with model selection and publishing;
``modelcard``; ``evaluate``: Dice/IoU on crops and the instance segmentation; ``previews``);
the asset bodies here look up inputs in the event log, call it and describe the result.

**Storage.** Every asset here runs on a local storage root or an ``s3://`` one through the same
code (:mod:`fib_assets.core.storage`): ground-truth revisions and Zarr variants are read where
they are, prediction arrays and their block markers are written in place (tensorstore's
kvstore of the location; a killed pod's replacement resumes from the marker objects),
checkpoints and segmentations are written locally and published (on S3 uploaded, read back and
marked complete last); checkpoints are loaded through a verified local copy (transfer learning
included).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import torch
from pydantic import Field

import fib_assets.core.ml.crops as crops_module
import fib_assets.core.ml.evaluate as evaluate_module
import fib_assets.core.ml.predict as predict_module
import fib_assets.core.ml.sampler as sampler_module
import fib_assets.core.ml.train as train_module
import fib_assets.core.ml.training_run as training_run_module
from fib_assets.core import labels
from fib_assets.core import storage as object_storage
from fib_assets.core.blockwise import fingerprint
from fib_assets.core.geometry import validate_region_key
from fib_assets.core.ml.classes import ClassSpec
from fib_assets.core.ml.crops import RegionData
from fib_assets.core.ml.evaluate import Segmentation, score_against_crops, segment_predictions
from fib_assets.core.ml.experiments import Experiment
from fib_assets.core.ml.predict import (
    connected_components_blockwise,
    plan_prediction,
    predict_volume,
    read_prediction_attrs,
)
from fib_assets.core.ml.previews import (
    instance_preview,
    prediction_classes_present,
    prediction_preview,
)
from fib_assets.core.ml.training_run import train_experiment
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.deployment import GPU_OP_TAGS, GPU_POOL
from fib_assets.defs.metadata import latest_materialization
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource
from fib_assets.defs.training.partitions import ROLES, plan_split, regions_with_role

GROUP = "training"
OWNERS = ["team:ml"]
DEFAULT_EXPERIMENT = "demo_mito_scratch"
GROUND_TRUTH = dg.AssetKey("ground_truth_crops")
VOLUME_ZARR = dg.AssetKey("volume_zarr")
TRAINING_SPLIT = dg.AssetKey("training_split")
ORGANELLE_MODEL = dg.AssetKey("organelle_model")
PREDICTIONS = dg.AssetKey("predictions")
SEGMENTATION = dg.AssetKey("segmentation")
PREDICTION_COMPLETE = "prediction_complete"

Variant = Literal["zarr", "hdf5", "n5", "tiff", "parquet"]


class SplitConfig(dg.Config):
    """How regions with accepted ground truth are split (recorded in the materialization)."""

    seed: int = Field(default=0, ge=0, description="Seed of the random assignment of regions.")
    test_fraction: float = Field(
        default=0.3,
        ge=0.0,
        lt=1.0,
        description="Share of regions held out as test regions (at least one once there are "
        "two regions). Test regions are never used for training or model selection.",
    )
    validation_fraction: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Share of regions used only to select the best checkpoint (model "
        "selection). The curators' held-out crops of training regions are used too.",
    )
    reshuffle: bool = Field(
        default=False,
        description="Draw every region's role anew. Off: regions keep the role they had in "
        "the previous split (a test region never becomes a training region), new ones are "
        "assigned at random.",
    )


class TrainingConfig(dg.Config):
    """Run settings of a training step (the experiment file holds the science)."""

    variant: Variant = Field(
        default="zarr",
        description="Which format variant the raw voxels are read from (volume_<variant>; "
        "the crops' ROIs are in raw voxels, the same grid in every variant).",
    )
    threads: int = Field(
        default=0, ge=0, description="CPU threads for torch (0: torch's default, all cores)."
    )
    iterations: int = Field(
        default=0,
        ge=0,
        description="Override the experiment's budget (0: use the experiment file). For smoke "
        "runs; the model card records it.",
    )
    selection_points: int = Field(
        default=5,
        ge=1,
        description="How many times during training the model is scored on the validation "
        "crops; the best-scoring checkpoint is kept.",
    )


class InferenceConfig(dg.Config):
    """Which model predicts (one experiment's latest organelle_model)."""

    experiment: str = Field(
        default=DEFAULT_EXPERIMENT,
        description="Experiment whose organelle_model predicts (a file name under experiments/).",
    )
    variant: Variant = Field(
        default="zarr", description="Format variant the raw voxels are read from."
    )
    block_edge: int = Field(
        default=0,
        ge=0,
        description="Cubic block edge in voxels (a multiple of the network's downsampling "
        "factor); 0: the model's default (about 64).",
    )


def _latest_unpartitioned(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any] | None:
    res = instance.fetch_materializations(key, limit=1)
    if not res.records:
        return None
    rec = res.records[0]
    mat = rec.event_log_entry.asset_materialization
    assert mat is not None
    return {
        "data_version": (mat.tags or {}).get("dagster/data_version"),
        "storage_id": rec.storage_id,
        "run_id": rec.run_id,
        "metadata": {k: v.value for k, v in mat.metadata.items()},
    }


def current_split(instance: dg.DagsterInstance) -> tuple[dict[str, str], dict[str, Any]] | None:
    """(region -> role, the split's materialization record) or None."""
    rec = _latest_unpartitioned(instance, TRAINING_SPLIT)
    if rec is None:
        return None
    return {str(k): str(v) for k, v in dict(rec["metadata"]["assignment"]).items()}, rec


def _revision_store(storage: StorageResource, region: str) -> labels.RevisionStore:
    """The region's ground-truth revisions (read only: no folder is created)."""
    return labels.RevisionStore(
        object_storage.join(storage.root, "ground_truth_crops", validate_region_key(region))
    )


def region_data(
    instance: dg.DagsterInstance, storage: StorageResource, region: str, role: str, variant: str
) -> RegionData:
    revision = _revision_store(storage, region).current()
    if revision is None:
        raise dg.Failure(f"{region}: no accepted ground_truth_crops revision")
    rec = latest_materialization(instance, dg.AssetKey(f"volume_{variant}"), region)
    if rec is None:
        raise dg.Failure(
            f"volume_{variant}[{region}] is not materialized: training reads the raw voxels "
            "through it (materialize it, or choose another variant)"
        )
    path = str(rec["metadata"]["dagster/uri"])
    return RegionData(region, role, revision, path, rec["data_version"], variant)


def model_record(instance: dg.DagsterInstance, experiment: str) -> dict[str, Any]:
    """The latest organelle_model[experiment] materialization (fails naming what to do)."""
    rec = latest_materialization(instance, ORGANELLE_MODEL, experiment)
    if rec is None:
        raise dg.Failure(
            f"organelle_model[{experiment}] is not materialized: train it first "
            f"(materialize organelle_model, partition {experiment})"
        )
    ckpt = str(rec["metadata"]["checkpoint"])
    try:
        # a verified local copy (the file itself on a local root): torch reads local files
        local = object_storage.fetch(ckpt)
    except (FileNotFoundError, object_storage.StorageError) as err:
        raise dg.Failure(f"organelle_model[{experiment}]: checkpoint {ckpt}: {err}") from err
    if not local.is_file():
        raise dg.Failure(f"organelle_model[{experiment}]: checkpoint {ckpt} is missing")
    return {**rec, "checkpoint": ckpt, "local_checkpoint": local}


def _split_table(assignment: Mapping[str, str], details: Mapping[str, dict[str, Any]]) -> str:
    rows = [
        "| region | role | ground truth rev | train crops | held-out crops |",
        "|---|---|---|---|---|",
    ]
    for region, role in assignment.items():
        d = details.get(region, {})
        rows.append(
            f"| {region} | **{role}** | {d.get('revision', '')} | "
            f"{', '.join(d.get('train', []))} | {', '.join(d.get('test', []))} |"
        )
    return "\n".join(rows)


def model_metadata(card: Mapping[str, Any], markdown: str, variant: str) -> dict[str, Any]:
    """organelle_model's metadata: the card's headline numbers, and every data version used."""
    used: Mapping[str, Mapping[str, Any]] = card["training_data"]["regions"]
    init = card["initialization"]
    by_role = card["regions_by_role"]
    versions = {
        "training_split": card["training_data"]["split_data_version"],
        **{f"{r}:ground_truth_crops": v["ground_truth_data_version"] for r, v in used.items()},
        **{f"{r}:volume_{variant}": v["variant_data_version"] for r, v in used.items()},
    }
    if init.get("experiment"):
        versions[f"init:organelle_model[{init['experiment']}]"] = init["data_version"]
    checkpoint = str(card["checkpoint"])  # a local path or an s3:// URL
    folder = object_storage.parent(checkpoint)
    meta: dict[str, Any] = {
        "dagster/uri": dg.MetadataValue.path(folder),
        "checkpoint": dg.MetadataValue.path(checkpoint),
        "checkpoint_sha256": card["checkpoint_sha256"],
        "model_card": dg.MetadataValue.md(markdown),
        "model_card_file": dg.MetadataValue.path(object_storage.join(folder, "model_card.json")),
        "experiment": dg.MetadataValue.json(card["experiment_spec"]),
        "architecture": dg.MetadataValue.json(card["architecture"]),
        "parameters": int(card["parameters"]),
        "iterations": int(card["iterations"]),
        "selected_step": int(card["selected_step"]),
        "final_loss": float(card["metrics"]["final_loss"]),
        "wall_time_s": float(card["wall_time_s"]),
        "iterations_per_s": float(card["iterations_per_s"]),
        "device": str(card["device"]),
        "train_regions": dg.MetadataValue.json(by_role["train"]),
        "validation_regions": dg.MetadataValue.json(by_role["validation"]),
        "test_regions": dg.MetadataValue.json(by_role["test"]),
        "data_versions": dg.MetadataValue.json(versions),
    }
    for cls, value in (card["metrics"]["validation_dice"] or {}).items():
        meta[f"validation_dice_{cls}"] = float(value)
    return meta


def build_training_assets(
    declared: Mapping[str, Experiment], experiments: dg.StaticPartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """The family's four assets for the ``declared`` experiments (partitions ``experiments``)."""
    for name in experiments.get_partition_keys():
        if name not in declared:
            raise ValueError(f"partition {name!r} has no declared experiment")

    @dg.asset(
        name="training_split",
        group_name=GROUP,
        owners=OWNERS,
        kinds={"json"},
        code_version=code_version_of(plan_split),
        deps=[dg.AssetDep(GROUND_TRUTH, partition_mapping=dg.AllPartitionMapping())],
    )
    def training_split(
        context: dg.AssetExecutionContext, storage: StorageResource, config: SplitConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Which regions train models, which select among checkpoints (validation) and which
        are held out to measure them (test). Only regions with an accepted ground-truth
        revision take part. The assignment is seeded and sticky: a region keeps its role when
        new regions arrive, so a test region is never trained on later. The table in the
        metadata is the record curators and auditors read."""
        candidates = sorted(context.instance.get_dynamic_partitions(regions.name or "regions"))
        details: dict[str, dict[str, Any]] = {}
        for region in candidates:
            rev = _revision_store(storage, region).current()
            if rev is not None:
                details[region] = {
                    "revision": rev.number,
                    "data_version": rev.data_version,
                    "train": [c.name for c in rev.crops if c.split == "train"],
                    "test": [c.name for c in rev.crops if c.split != "train"],
                }
        if not details:
            raise dg.Failure("no region has an accepted ground_truth_crops revision yet")
        previous = None
        prev = current_split(context.instance)
        # a different seed is a new split; otherwise regions keep their roles
        if (
            prev is not None
            and not config.reshuffle
            and prev[1]["metadata"].get("seed") == config.seed
        ):
            previous = prev[0]
        assignment = plan_split(
            list(details),
            seed=config.seed,
            test_fraction=config.test_fraction,
            validation_fraction=config.validation_fraction,
            previous=previous,
        )
        by_role = {role: regions_with_role(assignment, role) for role in ROLES}
        context.log.info(f"training split: {by_role}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(fingerprint({"assignment": assignment})),
            metadata={
                "assignment": dg.MetadataValue.json(assignment),
                "split": dg.MetadataValue.md(_split_table(assignment, details)),
                "train_regions": dg.MetadataValue.json(by_role["train"]),
                "validation_regions": dg.MetadataValue.json(by_role["validation"]),
                "test_regions": dg.MetadataValue.json(by_role["test"]),
                "n_train": len(by_role["train"]),
                "n_validation": len(by_role["validation"]),
                "n_test": len(by_role["test"]),
                "seed": config.seed,
                "test_fraction": config.test_fraction,
                "validation_fraction": config.validation_fraction,
                "kept_from_previous": dg.MetadataValue.json(sorted(previous or {})),
                "ground_truth": dg.MetadataValue.json(details),
            },
        )

    @dg.asset(
        name="organelle_model",
        partitions_def=experiments,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"pytorch"},
        code_version=code_version_of(
            train_module,
            sampler_module,
            crops_module,
            training_run_module,
            evaluate_module,
        ),
        deps=[
            dg.AssetDep(TRAINING_SPLIT),
            dg.AssetDep(GROUND_TRUTH, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(VOLUME_ZARR, partition_mapping=dg.AllPartitionMapping()),
        ],
        op_tags=GPU_OP_TAGS,
        pool=GPU_POOL,
    )
    def organelle_model(
        context: dg.AssetExecutionContext, storage: StorageResource, config: TrainingConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """A 3D U-Net segmentation model for one declared experiment (files under
        experiments/: classes, pre-processing, architecture, initialization, budget, seed,
        curator intervention, compute). Trained on the training regions' accepted ground-truth
        crops; the best checkpoint on the validation crops is kept. Writes the checkpoint and a
        model card (architecture, the ground-truth revisions and volume versions used, metrics,
        wall time, device, iterations/s) under <storage>/organelle_model/<experiment>/. The
        data version is the checkpoint's sha256, so a retrained model makes its predictions
        stale. Runs in the GPU pool (GPU node on Kubernetes) whatever the experiment's
        compute."""
        name = context.partition_key
        exp = declared[name]
        split = current_split(context.instance)
        if split is None:
            raise dg.Failure("training_split is not materialized: materialize it first")
        assignment, split_rec = split
        by_role = {role: regions_with_role(assignment, role) for role in ROLES}
        if not by_role["train"]:
            raise dg.Failure("training_split has no training region")
        data = [
            region_data(context.instance, storage, r, assignment[r], config.variant)
            for r in by_role["train"] + by_role["validation"]
        ]
        init = None
        if exp.initialization.source is not None:
            src = model_record(context.instance, exp.initialization.source)
            init = {
                "experiment": exp.initialization.source,
                "checkpoint": str(src["checkpoint"]),
                "checkpoint_sha256": src["metadata"].get("checkpoint_sha256"),
                "data_version": src["data_version"],
            }
        # the trainer reads the init weights from a local file (a verified copy of an s3://
        # checkpoint); the card records where they were published
        train_config = exp.train_config(str(src["local_checkpoint"]) if init else None)
        iterations = config.iterations or train_config.iterations
        train_config = train_config.replace(
            iterations=iterations, metrics_every=max(1, iterations // 10)
        )
        context.log.info(
            f"{name}: training regions {by_role['train']}, validation regions "
            f"{by_role['validation']}, {iterations} iterations"
        )
        if train_config.device == "cuda" and not torch.cuda.is_available():
            raise dg.Failure(
                f"experiment {name} declares compute: gpu but this step has no CUDA device; it "
                "runs on the Kubernetes GPU node pool (k8s_job_executor), not on this machine"
            )

        trained = train_experiment(
            exp,
            train_config,
            data,
            storage.asset_url("organelle_model", name),
            init=init,
            split_info={
                "data_version": split_rec["data_version"],
                "storage_id": split_rec["storage_id"],
                "regions_by_role": by_role,
            },
            n_points=config.selection_points,
            threads=config.threads or None,
            log=context.log.info,
            run_id=context.run_id,
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(trained.sha256),
            metadata=model_metadata(trained.card, trained.markdown, config.variant),
        )

    @dg.asset(
        name="predictions",
        partitions_def=regions,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"zarr"},
        code_version=code_version_of(predict_module),
        deps=[
            dg.AssetDep(ORGANELLE_MODEL, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(VOLUME_ZARR),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                PREDICTION_COMPLETE,
                asset="predictions",
                partitions_def=regions,
                blocking=True,
                description="Every block of the region was predicted, stored and read back, and "
                "the container is marked complete with one map per class of the model.",
            )
        ],
    )
    def predictions(
        context: dg.AssetExecutionContext, storage: StorageResource, config: InferenceConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Per-class prediction maps of the whole region (OME-Zarr, uint8, > 127 means the
        organelle) from the chosen experiment's organelle_model, computed block by block with a
        halo. Resumable: a killed run recomputes only the missing blocks. The preview shows the
        middle slice with each class coloured as in the ground-truth overlays."""
        region = context.partition_key
        if config.experiment not in declared:
            raise dg.Failure(
                f"unknown experiment {config.experiment!r}; declared: {sorted(declared)}"
            )
        model = model_record(context.instance, config.experiment)
        raw = latest_materialization(
            context.instance, dg.AssetKey(f"volume_{config.variant}"), region
        )
        if raw is None:
            raise dg.Failure(f"volume_{config.variant}[{region}] is not materialized")
        raw_path = str(raw["metadata"]["dagster/uri"])
        sha = str(model["metadata"]["checkpoint_sha256"])
        out = object_storage.join(
            storage.asset_url("predictions", region), f"{config.experiment}-{sha[:12]}.zarr"
        )
        block = (config.block_edge,) * 3 if config.block_edge else None
        try:
            plan = plan_prediction(model["checkpoint"], raw_path, out, block_shape=block)
        except ValueError as err:
            raise dg.Failure(f"cannot plan the prediction: {err}") from err
        result = predict_volume(plan)
        context.log.info(
            f"{region}: {result.blocks_computed}/{result.blocks_total} blocks computed in "
            f"{result.seconds:.1f} s ({result.voxels_per_s / 1e6:.2f} Mvox/s)"
        )
        present = prediction_classes_present(out, plan.classes)
        complete = bool(read_prediction_attrs(out).get("complete")) and present == list(
            plan.classes
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(plan.fingerprint),
            metadata={
                "dagster/uri": dg.MetadataValue.path(out),
                "experiment": config.experiment,
                "checkpoint": dg.MetadataValue.path(str(model["checkpoint"])),
                "checkpoint_sha256": sha,
                "model_data_version": str(model["data_version"]),
                "raw": dg.MetadataValue.path(raw_path),
                "raw_data_version": str(raw["data_version"]),
                "classes": dg.MetadataValue.json(list(plan.classes)),
                "arrays": dg.MetadataValue.json([f"predictions/{c}/s0" for c in plan.classes]),
                "shape_zyx": dg.MetadataValue.json(list(plan.volume_shape)),
                "voxel_size_nm": dg.MetadataValue.json(list(plan.voxel_size_nm)),
                "block_shape": dg.MetadataValue.json(list(plan.block_shape)),
                "blocks_total": result.blocks_total,
                "blocks_computed": result.blocks_computed,
                "seconds": float(result.seconds),
                "voxels_per_s": float(result.voxels_per_s),
                "plan": dg.MetadataValue.json(plan.to_dict()),
                "preview": dg.MetadataValue.md(prediction_preview(raw_path, out)),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=PREDICTION_COMPLETE,
                    passed=complete,
                    description=(
                        f"{result.blocks_total} blocks, {len(present)} class maps"
                        if complete
                        else f"incomplete container: class maps present {present} of "
                        f"{list(plan.classes)}"
                    ),
                    metadata={"blocks_total": result.blocks_total},
                )
            ],
        )

    @dg.asset(
        name="segmentation",
        partitions_def=regions,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"zarr"},
        code_version=code_version_of(connected_components_blockwise, evaluate_module),
        deps=[
            dg.AssetDep(PREDICTIONS),
            dg.AssetDep(GROUND_TRUTH),
            dg.AssetDep(TRAINING_SPLIT),
        ],
    )
    def segmentation(
        context: dg.AssetExecutionContext, storage: StorageResource, config: InferenceConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Organelle instances of the region (OME-Zarr, uint64, one id per connected object
        per class) from the predictions of the chosen experiment, labelled blockwise and merged
        across block faces (resumable). Scored against the region's ground-truth crops:
        dice_<class> / iou_<class> in the metadata. Only regions whose role is 'test' in the
        training split give an unbiased score (region_role says which)."""
        region = context.partition_key
        pred = _predictions_record(context.instance, region, config.experiment)
        pred_path = str(pred["metadata"]["dagster/uri"])
        if not read_prediction_attrs(pred_path).get("complete"):
            raise dg.Failure(f"{pred_path}: predictions are incomplete; rematerialize them")
        out = object_storage.join(
            storage.asset_url("segmentation", region),
            f"{config.experiment}-{str(pred['data_version'])[:12]}.zarr",
        )
        seg = _segment(pred_path, out, str(pred["data_version"]))
        classes = seg.classes
        split = current_split(context.instance)
        role = split[0].get(region, "not in split") if split else "no split"
        revision = _revision_store(storage, region).current()
        raw_path = str(pred["metadata"]["raw"])
        overlaps, table = (
            score_against_crops(revision, raw_path, out, classes)  # type: ignore[arg-type]
            if revision
            else ({}, "")
        )
        meta: dict[str, Any] = {
            "dagster/uri": dg.MetadataValue.path(out),
            "experiment": config.experiment,
            "storage_mode": (
                "segmented in local scratch, uploaded, read back (sha256) and marked complete"
                if object_storage.is_remote(out)
                else "written in place"
            ),
            "predictions": dg.MetadataValue.path(pred_path),
            "predictions_data_version": str(pred["data_version"]),
            "checkpoint_sha256": str(pred["metadata"].get("checkpoint_sha256")),
            "region_role": role,
            "test_region": role == "test",
            "arrays": dg.MetadataValue.json([f"instances/{c.name}/s0" for c in classes]),
            "shape_zyx": dg.MetadataValue.json(list(seg.shape)),
            "ground_truth_revision": revision.number if revision else -1,
            "ground_truth_data_version": revision.data_version if revision else "",
            "preview": dg.MetadataValue.md(instance_preview(raw_path, out, classes[0].name)),
        }
        for c in classes:
            meta[f"instances_{c.name}"] = seg.counts[c.name]
        if revision is not None:
            for c in classes:
                meta[f"dice_{c.name}"] = float(overlaps[c.name].dice)
                meta[f"iou_{c.name}"] = float(overlaps[c.name].iou)
            meta["dice_by_crop"] = dg.MetadataValue.md(
                f"Region role: **{role}** (only test regions give an unbiased score)\n\n" + table
            )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(
                fingerprint(
                    {
                        "predictions": pred["data_version"],
                        "ground_truth": revision.data_version if revision else None,
                    }
                )
            ),
            metadata=meta,
        )

    return [training_split, organelle_model, predictions, segmentation]


def _segment(pred_path: str, out: str, version: str) -> Segmentation:
    """Segment a prediction container into ``out`` (local path or ``s3://`` URL).

    Locally in place and resumable (block markers beside it). On an object store the labelling
    runs in pod-local scratch (its markers there: a replaced pod starts the segmentation over,
    which is cheap next to prediction) and the finished container is uploaded, read back and
    marked complete last; a complete one is reused from its attributes."""
    with object_storage.Staging(out, need_bytes=_segmentation_bytes(pred_path)) as stage:
        if stage.staged and object_storage.is_complete(out):
            attrs = read_prediction_attrs(out)
            plan = read_prediction_attrs(pred_path)["plan"]
            s = [int(v) for v in plan["volume_shape"]]
            return Segmentation(
                [ClassSpec.from_dict(c) for c in attrs["classes"]],
                {str(k): int(v) for k, v in attrs["max_id"].items()},
                (s[0], s[1], s[2]),
            )
        seg = segment_predictions(pred_path, Path(stage.path), version)  # type: ignore[arg-type]
        stage.publish({"predictions_data_version": version})
    return seg


def _segmentation_bytes(pred_path: str) -> int:
    """Scratch for a staged segmentation: uint64 fragments and instances of every class
    (uncompressed, an upper bound)."""
    attrs = read_prediction_attrs(pred_path)
    voxels = 1
    for v in attrs["plan"]["volume_shape"]:
        voxels *= int(v)
    return 2 * 8 * voxels * max(1, len(attrs["plan"]["classes"])) + 2**20


def _predictions_record(
    instance: dg.DagsterInstance, region: str, experiment: str, search: int = 50
) -> dict[str, Any]:
    """The newest predictions[region] materialization made with ``experiment``'s model."""
    res = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=PREDICTIONS, asset_partitions=[region]), limit=search
    )
    for rec in res.records:
        mat = rec.event_log_entry.asset_materialization
        assert mat is not None
        meta = {k: v.value for k, v in mat.metadata.items()}
        if meta.get("experiment") == experiment:
            return {
                "data_version": (mat.tags or {}).get("dagster/data_version"),
                "storage_id": rec.storage_id,
                "metadata": meta,
            }
    raise dg.Failure(
        f"predictions[{region}] has no materialization with experiment {experiment!r}: "
        "materialize predictions with the same experiment first"
    )
