"""Training experiments declared in YAML files (static partitions of the model assets).

Schema (every key is checked; errors name the file and the key)::

    name: mito-transfer            # ^[a-z0-9][a-z0-9_-]{0,62}$ (a partition key)
    classes: [mito]                # COSEM names, combined names, or {name: [ids]}
    loss: balanced_mse             # balanced_mse (COSEM) | balanced_cross_entropy (ASEM)
    preprocessing:                 # named steps, applied in order (see preprocess.py)
      - {name: percentile_stretch, low_percentile: 0.5, high_percentile: 99.5}
      - {name: clahe, clip_limit: 0.02, kernel_size: [32, 32, 32]}
      - {name: zscore}
    architecture:                  # UNetConfig keys but out_channels / final_activation,
      levels: 4                    # which follow from the classes and the loss
      base_width: 12
      width_factor: 6
      downsample: [[2, 2, 2], [3, 3, 3], [3, 3, 3]]
      padding: valid
      norm: none                   # optional: none (COSEM) or batch (running statistics at
                                   # inference, so blockwise prediction stays exact)
    initialization: scratch        # or {from: <experiment name>, freeze_encoder: true}
    budget: {iterations: 20000, patch_size: [54, 54, 54], batch_size: 1}
    optimizer: {lr: 5.0e-5, betas: [0.95, 0.999]}          # optional, COSEM defaults;
                                                           # schedule: constant | cosine
    augmentation: {...}            # optional, Augmentation keys
    seed: 0
    curator_intervention: none     # none | preprocessing | transfer_learning | correction_round_N
    compute: gpu                   # cpu | gpu

``patch_size`` is the target (output) patch in voxels (z, y, x); the raw patch adds the
network's context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fib_assets.core.ml.classes import ClassSpec, disjoint, resolve_classes
from fib_assets.core.ml.preprocess import Augmentation, Pipeline

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
INTERVENTION_PATTERN = re.compile(
    r"^(none|preprocessing|transfer_learning|correction_round_[1-9]\d*)$"
)
TOP_LEVEL_KEYS = {
    "name": True,
    "classes": True,
    "loss": False,
    "preprocessing": False,
    "architecture": True,
    "initialization": False,
    "budget": True,
    "optimizer": False,
    "augmentation": False,
    "seed": False,
    "curator_intervention": False,
    "compute": False,
    "description": False,
}
ARCHITECTURE_KEYS = {
    "levels",
    "base_width",
    "width_factor",
    "downsample",
    "padding",
    "convs_per_level",
    "kernel_size",
    "in_channels",
    "norm",
}
BUDGET_KEYS = {"iterations", "patch_size", "batch_size"}
#: learning-rate schedules (see :meth:`fib_assets.core.ml.train.TrainConfig.lr_at`)
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
OPTIMIZER_KEYS = {"lr", "betas", "weight_decay", "schedule"}


class ExperimentError(ValueError):
    """An experiment file that does not follow the schema (names the file and the key)."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: key {key!r}: {problem}")


@dataclass(frozen=True)
class Initialization:
    """``scratch`` (``source is None``) or fine-tuning from another experiment's model."""

    source: str | None = None
    freeze_encoder: bool = False

    def to_dict(self) -> str | dict[str, Any]:
        if self.source is None:
            return "scratch"
        return {"from": self.source, "freeze_encoder": self.freeze_encoder}


@dataclass(frozen=True)
class Budget:
    iterations: int
    patch_size: tuple[int, int, int]
    batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
        }


@dataclass(frozen=True)
class Experiment:
    """One declared training experiment (see the module doc for the YAML schema)."""

    name: str
    classes: tuple[ClassSpec, ...]
    architecture: dict[str, Any]
    budget: Budget
    loss: str = "balanced_mse"
    preprocessing: tuple[dict[str, Any], ...] = ()
    initialization: Initialization = field(default_factory=Initialization)
    optimizer: dict[str, Any] = field(default_factory=dict)
    augmentation: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    curator_intervention: str = "none"
    compute: str = "cpu"
    description: str = ""
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": [{c.name: list(c.ids)} for c in self.classes],
            "loss": self.loss,
            "preprocessing": [dict(s) for s in self.preprocessing],
            "architecture": dict(self.architecture),
            "initialization": self.initialization.to_dict(),
            "budget": self.budget.to_dict(),
            "optimizer": dict(self.optimizer),
            "augmentation": dict(self.augmentation),
            "seed": self.seed,
            "curator_intervention": self.curator_intervention,
            "compute": self.compute,
            "description": self.description,
        }

    def train_config(self, init_checkpoint: str | None = None) -> Any:
        """The :class:`~fib_assets.core.ml.train.TrainConfig` of this experiment.

        ``init_checkpoint`` is the checkpoint of the ``initialization.from`` experiment
        (required exactly when the experiment fine-tunes). Imports torch.
        """
        from fib_assets.core.ml.train import TrainConfig
        from fib_assets.core.ml.unet import UNetConfig

        if (self.initialization.source is None) != (init_checkpoint is None):
            raise ValueError(
                f"{self.name}: initialization is {self.initialization.to_dict()!r}; "
                f"init_checkpoint={init_checkpoint!r} does not fit it"
            )
        ce = self.loss == "balanced_cross_entropy"
        unet = UNetConfig.from_dict(
            {
                **self.architecture,
                "out_channels": len(self.classes) + (1 if ce else 0),
                "final_activation": "none" if ce else "tanh",
            }
        )
        opt = dict(self.optimizer)
        if "schedule" in opt:
            opt["lr_schedule"] = opt.pop("schedule")
        if "betas" in opt:
            opt["betas"] = tuple(opt["betas"])
        return TrainConfig(
            unet=unet,
            classes=self.classes,
            loss=self.loss,  # type: ignore[arg-type]
            output_shape=self.budget.patch_size,
            batch_size=self.budget.batch_size,
            iterations=self.budget.iterations,
            seed=self.seed,
            device="cuda" if self.compute == "gpu" else "cpu",
            init_from=init_checkpoint,
            freeze_encoder=self.initialization.freeze_encoder,
            augmentation=Augmentation.from_dict(self.augmentation),
            preprocessing=self.preprocessing,
            **opt,
        )

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> Experiment:
        return _parse(d, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Experiment:
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ExperimentError(str(p), "<document>", f"not valid YAML: {err}") from err
        return _parse(doc, str(p))


def _int(source: str, key: str, v: Any, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ExperimentError(source, key, f"must be an integer >= {minimum}, got {v!r}")
    return v


def _mapping(source: str, key: str, v: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise ExperimentError(source, key, f"must be a mapping, got {v!r}")
    unknown = sorted(set(v) - allowed)
    if unknown:
        raise ExperimentError(
            source, f"{key}.{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}"
        )
    return dict(v)


def _parse(doc: Any, source: str) -> Experiment:
    if not isinstance(doc, Mapping):
        raise ExperimentError(source, "<document>", f"must be a mapping, got {type(doc).__name__}")
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise ExperimentError(
                source, str(key), f"unknown key; allowed: {sorted(TOP_LEVEL_KEYS)}"
            )
    for key, required in TOP_LEVEL_KEYS.items():
        if required and key not in doc:
            raise ExperimentError(source, key, "is required")

    name = doc["name"]
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ExperimentError(source, "name", f"must match {NAME_PATTERN.pattern}, got {name!r}")
    try:
        classes = resolve_classes(doc["classes"])
    except (ValueError, TypeError) as err:
        raise ExperimentError(source, "classes", str(err)) from err

    loss = doc.get("loss", "balanced_mse")
    if loss not in ("balanced_mse", "balanced_cross_entropy"):
        raise ExperimentError(
            source, "loss", f"must be balanced_mse or balanced_cross_entropy, got {loss!r}"
        )
    if loss == "balanced_cross_entropy" and not disjoint(classes):
        raise ExperimentError(source, "classes", "must not share label ids for cross-entropy")

    steps = doc.get("preprocessing") or []
    if not isinstance(steps, list):
        raise ExperimentError(source, "preprocessing", f"must be a list of steps, got {steps!r}")
    try:
        pipeline = Pipeline.from_dict(steps)
    except (ValueError, TypeError) as err:
        raise ExperimentError(source, "preprocessing", str(err)) from err

    arch = _mapping(source, "architecture", doc["architecture"], ARCHITECTURE_KEYS)
    try:
        from fib_assets.core.ml.unet import UNetConfig  # pure shape arithmetic checked below

        unet = UNetConfig.from_dict({**arch, "out_channels": 1})
    except (ValueError, TypeError) as err:
        raise ExperimentError(source, "architecture", str(err)) from err

    b = _mapping(source, "budget", doc["budget"], BUDGET_KEYS)
    for key in BUDGET_KEYS - {"batch_size"}:
        if key not in b:
            raise ExperimentError(source, f"budget.{key}", "is required")
    patch = b["patch_size"]
    if isinstance(patch, int):
        patch = [patch] * 3
    if not isinstance(patch, list) or len(patch) != 3:
        raise ExperimentError(source, "budget.patch_size", f"must be [z, y, x], got {patch!r}")
    patch_t = tuple(_int(source, "budget.patch_size", p, 1) for p in patch)
    achieved = unet.output_shape(unet.input_shape_for_output(patch_t))
    if achieved != patch_t:
        raise ExperimentError(
            source,
            "budget.patch_size",
            f"{list(patch_t)} is not an output size of this architecture; nearest larger: "
            f"{list(achieved)}",
        )
    budget = Budget(
        _int(source, "budget.iterations", b["iterations"], 1),
        (patch_t[0], patch_t[1], patch_t[2]),
        _int(source, "budget.batch_size", b.get("batch_size", 1), 1),
    )

    init_doc = doc.get("initialization", "scratch")
    if init_doc == "scratch":
        init = Initialization()
    elif isinstance(init_doc, Mapping):
        d = _mapping(source, "initialization", init_doc, {"from", "freeze_encoder"})
        src = d.get("from")
        if not isinstance(src, str) or not NAME_PATTERN.fullmatch(src):
            raise ExperimentError(
                source, "initialization.from", f"must name an experiment, got {src!r}"
            )
        if src == name:
            raise ExperimentError(
                source, "initialization.from", "an experiment cannot start from itself"
            )
        freeze = d.get("freeze_encoder", False)
        if not isinstance(freeze, bool):
            raise ExperimentError(
                source, "initialization.freeze_encoder", f"must be true/false, got {freeze!r}"
            )
        init = Initialization(src, freeze)
    else:
        raise ExperimentError(
            source,
            "initialization",
            f"must be 'scratch' or {{from: <experiment>}}, got {init_doc!r}",
        )

    opt = _mapping(source, "optimizer", doc.get("optimizer") or {}, OPTIMIZER_KEYS)
    lr = opt.get("lr", 5e-5)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ExperimentError(source, "optimizer.lr", f"must be a positive number, got {lr!r}")
    betas = opt.get("betas", [0.95, 0.999])
    if (
        not isinstance(betas, list)
        or len(betas) != 2
        or not all(isinstance(x, int | float) and 0 <= x < 1 for x in betas)
    ):
        raise ExperimentError(
            source, "optimizer.betas", f"must be two numbers in [0, 1), got {betas!r}"
        )

    schedule = opt.get("schedule", "constant")
    if schedule not in LR_SCHEDULES:
        raise ExperimentError(
            source, "optimizer.schedule", f"must be one of {list(LR_SCHEDULES)}, got {schedule!r}"
        )

    aug = doc.get("augmentation") or {}
    try:
        Augmentation.from_dict(aug)
    except (ValueError, TypeError) as err:
        raise ExperimentError(source, "augmentation", str(err)) from err

    intervention = doc.get("curator_intervention", "none")
    if not isinstance(intervention, str) or not INTERVENTION_PATTERN.fullmatch(intervention):
        raise ExperimentError(
            source,
            "curator_intervention",
            "must be none, preprocessing, transfer_learning or correction_round_N (N >= 1), "
            f"got {intervention!r}",
        )
    if intervention == "transfer_learning" and init.source is None:
        raise ExperimentError(
            source, "initialization", "curator_intervention transfer_learning needs {from: ...}"
        )
    compute = doc.get("compute", "cpu")
    if compute not in ("cpu", "gpu"):
        raise ExperimentError(source, "compute", f"must be cpu or gpu, got {compute!r}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ExperimentError(source, "description", f"must be a string, got {description!r}")

    return Experiment(
        name=name,
        classes=classes,
        architecture=arch,
        budget=budget,
        loss=loss,
        preprocessing=tuple(pipeline.to_dict()),
        initialization=init,
        optimizer={
            "lr": float(lr),
            "betas": [float(x) for x in betas],
            **({"weight_decay": float(opt["weight_decay"])} if "weight_decay" in opt else {}),
            **({"schedule": schedule} if "schedule" in opt else {}),
        },
        augmentation=dict(aug),
        seed=_int(source, "seed", doc.get("seed", 0)),
        curator_intervention=intervention,
        compute=compute,
        description=description,
        source=source,
    )


def load_experiments(directory: str | Path) -> dict[str, Experiment]:
    """All ``*.yaml`` / ``*.yml`` experiments of ``directory`` by name; checks that names are
    unique, that every ``initialization.from`` exists and that there is no cycle."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no experiments directory")
    out: dict[str, Experiment] = {}
    for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
        exp = Experiment.from_yaml(path)
        if exp.name in out:
            raise ExperimentError(
                str(path), "name", f"{exp.name!r} is also declared in {out[exp.name].source}"
            )
        out[exp.name] = exp
    training_order(out)
    return out


def training_order(experiments: Mapping[str, Experiment]) -> list[str]:
    """Experiment names ordered so that every ``from`` source comes before its fine-tunings."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        exp = experiments[name]
        if state.get(name) == 1:
            raise ExperimentError(exp.source, "initialization.from", f"cycle {' -> '.join(chain)}")
        state[name] = 1
        src = exp.initialization.source
        if src is not None:
            if src not in experiments:
                raise ExperimentError(
                    exp.source, "initialization.from", f"unknown experiment {src!r}"
                )
            visit(src, [*chain, src])
        state[name] = 2
        order.append(name)

    for name in sorted(experiments):
        visit(name, [name])
    return order
