"""Checks of the training family. Both are blocking: a split that leaks test regions into
training, or a checkpoint that does not load or predicts non-finite values, must stop the
models and predictions downstream of it in the same run."""

import dagster as dg

from fib_assets.core import storage as object_storage
from fib_assets.core.ml.train import checkpoint_smoke_test
from fib_assets.defs.metadata import latest_materialization
from fib_assets.defs.training.assets import ORGANELLE_MODEL, TRAINING_SPLIT, current_split
from fib_assets.defs.training.partitions import regions_with_role

SPLIT_DISJOINT = "test_regions_disjoint_from_training"
CHECKPOINT_PREDICTS = "checkpoint_loads_and_predicts_finite"


def split_problems(assignment: dict[str, str], trained_on: dict[str, list[str]]) -> list[str]:
    """What is wrong with a split: unknown roles, no training or test region, and test
    regions that an existing model (experiment -> its training regions) was trained on."""
    problems = []
    unknown = sorted(
        r for r, role in assignment.items() if role not in ("train", "validation", "test")
    )
    if unknown:
        problems.append(f"regions with an unknown role: {unknown}")
    test = set(regions_with_role(assignment, "test"))
    if not regions_with_role(assignment, "train"):
        problems.append("no training region")
    if len(assignment) >= 2 and not test:
        problems.append("no test region (two or more regions have ground truth)")
    for experiment, used in sorted(trained_on.items()):
        leaked = sorted(test & set(used))
        if leaked:
            problems.append(
                f"organelle_model[{experiment}] was trained on current test regions {leaked}"
            )
    return problems


def build_training_checks(
    experiments: dg.StaticPartitionsDefinition,
) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=TRAINING_SPLIT,
        name=SPLIT_DISJOINT,
        blocking=True,
        description="Every region has one role; there is a training region and (with two or "
        "more regions) a test region; no test region is a training region, and no existing "
        "organelle_model was trained on a region that is now a test region.",
    )
    def split_disjoint(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        split = current_split(context.instance)
        if split is None:
            return dg.AssetCheckResult(passed=False, description="training_split not materialized")
        assignment = split[0]
        trained_on: dict[str, list[str]] = {}
        for experiment in experiments.get_partition_keys():
            rec = latest_materialization(context.instance, ORGANELLE_MODEL, experiment)
            if rec is not None:
                trained_on[experiment] = list(rec["metadata"].get("train_regions") or [])
        problems = split_problems(assignment, trained_on)
        return dg.AssetCheckResult(
            passed=not problems,
            description="; ".join(problems)
            or f"{len(regions_with_role(assignment, 'test'))} test region(s), disjoint from "
            f"{len(regions_with_role(assignment, 'train'))} training region(s)",
            metadata={
                "test_regions": dg.MetadataValue.json(regions_with_role(assignment, "test")),
                "train_regions": dg.MetadataValue.json(regions_with_role(assignment, "train")),
                "models_checked": dg.MetadataValue.json(sorted(trained_on)),
            },
        )

    @dg.asset_check(
        asset=ORGANELLE_MODEL,
        name=CHECKPOINT_PREDICTS,
        partitions_def=experiments,
        blocking=True,
        description="The experiment's checkpoint file matches its recorded sha256, loads into "
        "the declared architecture, and predicts finite values of the declared shape on a "
        "seeded noise input.",
    )
    def checkpoint_predicts(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        from fib_assets.core.provenance.fixity import sha256_file

        experiment = context.partition_key
        rec = latest_materialization(context.instance, ORGANELLE_MODEL, experiment)
        if rec is None:
            return dg.AssetCheckResult(passed=False, description="not materialized")
        path = str(rec["metadata"]["checkpoint"])  # a local path or an s3:// URL
        try:
            # on an object store: a local copy checked against the model folder's marker
            local = object_storage.fetch(path)
        except (FileNotFoundError, object_storage.StorageError) as err:
            return dg.AssetCheckResult(passed=False, description=f"{path}: {err}")
        if not local.is_file():
            return dg.AssetCheckResult(passed=False, description=f"{path} is missing")
        recorded = str(rec["metadata"].get("checkpoint_sha256"))
        actual = sha256_file(local)
        if actual != recorded:
            return dg.AssetCheckResult(
                passed=False,
                description=f"{path} changed since training (sha256 {actual[:12]}… != "
                f"recorded {recorded[:12]}…)",
            )
        try:
            result = checkpoint_smoke_test(local)
        except (ValueError, RuntimeError, KeyError) as err:
            return dg.AssetCheckResult(passed=False, description=f"{path}: {err}")
        return dg.AssetCheckResult(
            passed=bool(result["ok"]),
            description=(
                f"output {result['output_shape']} finite"
                if result["ok"]
                else f"output {result['output_shape']} (expected {result['expected_shape']}), "
                f"finite: {result['finite']}"
            ),
            metadata={
                "input_shape": dg.MetadataValue.json(result["input_shape"]),
                "output_shape": dg.MetadataValue.json(result["output_shape"]),
                "expected_shape": dg.MetadataValue.json(result["expected_shape"]),
                "finite": bool(result["finite"]),
                "checkpoint_sha256": actual,
            },
        )

    return [split_disjoint, checkpoint_predicts]
