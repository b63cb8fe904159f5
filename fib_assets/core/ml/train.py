"""Training: a frozen :class:`TrainConfig`, a :class:`Trainer` and self-describing checkpoints.

The trainer receives what it needs (a config and a :class:`~fib_assets.core.ml.sampler.
PatchSampler`); batch ``s`` is a pure function of the sampler's seed and ``s``, the model is
initialised from ``torch.manual_seed(config.seed)``, and the checkpoint holds the model,
the optimizer state and the step, so ``fit(2) -> save -> resume -> fit(4)`` gives the weights
of an uninterrupted ``fit(4)`` on CPU.

A checkpoint (``torch.save`` of plain dicts and tensors, loadable with ``weights_only=True``)
carries its full config (architecture, classes, loss, optimizer, budget, pre-processing), the
data versions it was trained on, the sampler description, the metrics history and library
versions: a model can be rebuilt, audited and resumed from the file alone.

Transfer learning (ASEM): ``init_from`` names another checkpoint whose weights initialise the
model (tensors of a different shape, e.g. a head for other classes, stay freshly initialised
and are listed in :attr:`Trainer.init_report`); ``freeze_encoder`` keeps the contracting path
fixed while the rest is fine-tuned.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fib_assets.core.ml.classes import ClassSpec, disjoint
from fib_assets.core.ml.experiments import LR_SCHEDULES
from fib_assets.core.ml.losses import IGNORE_INDEX, balanced_cross_entropy, balanced_mse
from fib_assets.core.ml.preprocess import Augmentation
from fib_assets.core.ml.sampler import Batch, PatchSampler
from fib_assets.core.ml.unet import UNet, UNetConfig

CHECKPOINT_FORMAT = "fib_assets.unet_checkpoint/1"
LossName = Literal["balanced_mse", "balanced_cross_entropy"]
Device = Literal["auto", "cpu", "cuda"]
LrSchedule = Literal["constant", "cosine"]
_LOSSES = ("balanced_mse", "balanced_cross_entropy")
_DEVICES = ("auto", "cpu", "cuda")


def _positive_int(name: str, v: Any, *, zero_ok: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < (0 if zero_ok else 1):
        need = "a non-negative" if zero_ok else "a positive"
        raise ValueError(f"TrainConfig.{name} must be {need} int, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (validated; round-trips via dicts).

    Shapes are (z, y, x) voxels; ``output_shape`` is the target patch and must be an exact
    output size of the network (the raw patch is ``input_shape``). Optimizer defaults are
    COSEM's: Adam, lr 5e-5, betas (0.95, 0.999). ``mixed_precision`` applies on CUDA only.
    """

    unet: UNetConfig
    classes: tuple[ClassSpec, ...]
    loss: LossName = "balanced_mse"
    output_shape: tuple[int, int, int] = (48, 48, 48)
    batch_size: int = 1
    iterations: int = 1000
    lr: float = 5e-5
    lr_schedule: LrSchedule = "constant"
    lr_min_factor: float = 0.05
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 0.0
    seed: int = 0
    metrics_every: int = 10
    checkpoint_every: int = 0
    device: Device = "auto"
    mixed_precision: bool = True
    init_from: str | None = None
    freeze_encoder: bool = False
    min_annotated: float = 0.5
    augmentation: Augmentation = field(default_factory=Augmentation)
    preprocessing: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.unet, UNetConfig):
            raise ValueError(f"TrainConfig.unet must be a UNetConfig, got {self.unet!r}")
        if not self.classes or not all(isinstance(c, ClassSpec) for c in self.classes):
            raise ValueError(f"TrainConfig.classes must be ClassSpecs, got {self.classes!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.loss not in _LOSSES:
            raise ValueError(f"TrainConfig.loss must be one of {_LOSSES}, got {self.loss!r}")
        k = len(self.classes)
        if self.loss == "balanced_mse":
            want, act = k, "tanh"
        else:
            want, act = k + 1, "none"
            if not disjoint(self.classes):
                raise ValueError(
                    "TrainConfig.classes must be disjoint for balanced_cross_entropy, got "
                    f"{[c.to_dict() for c in self.classes]}"
                )
        if self.unet.out_channels != want:
            raise ValueError(
                f"TrainConfig.unet.out_channels is {self.unet.out_channels} but loss "
                f"{self.loss!r} with {k} classes needs {want}"
            )
        if self.unet.final_activation != act:
            raise ValueError(
                f"TrainConfig.unet.final_activation is {self.unet.final_activation!r} but loss "
                f"{self.loss!r} needs {act!r}"
            )
        out = tuple(int(x) for x in self.output_shape)
        if len(out) != 3 or any(x < 1 for x in out):
            raise ValueError(f"TrainConfig.output_shape must be 3 positive ints, got {out!r}")
        object.__setattr__(self, "output_shape", out)
        achieved = self.unet.output_shape(self.unet.input_shape_for_output(out))
        if achieved != out:
            raise ValueError(
                f"TrainConfig.output_shape {list(out)} is not an output size of this U-Net; "
                f"the nearest larger one is {list(achieved)}"
            )
        for name in ("batch_size", "iterations", "metrics_every"):
            _positive_int(name, getattr(self, name))
        _positive_int("checkpoint_every", self.checkpoint_every, zero_ok=True)
        _positive_int("seed", self.seed, zero_ok=True)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.lr_min_factor <= 1.0:
            raise ValueError(
                f"TrainConfig.lr_min_factor must be in [0, 1], got {self.lr_min_factor!r}"
            )
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.device not in _DEVICES:
            raise ValueError(f"TrainConfig.device must be one of {_DEVICES}, got {self.device!r}")
        if not 0.0 <= self.min_annotated <= 1.0:
            raise ValueError(
                f"TrainConfig.min_annotated must be in [0, 1], got {self.min_annotated!r}"
            )
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(f"TrainConfig.init_from must be a path string, got {self.init_from!r}")
        if self.freeze_encoder and self.init_from is None:
            raise ValueError("TrainConfig.freeze_encoder needs init_from (a pretrained encoder)")
        object.__setattr__(self, "preprocessing", tuple(dict(s) for s in self.preprocessing))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.unet.input_shape_for_output(self.output_shape)

    def lr_at(self, step: int) -> float:
        """Learning rate of training step ``step`` (0-based): ``lr`` throughout ("constant"),
        or a half cosine from ``lr`` down to ``lr * lr_min_factor`` at the last step
        ("cosine"; large early steps find the structure, small late ones stop the model from
        bouncing between minibatches). A pure function of the step, so a resumed run continues
        on the same curve."""
        if self.lr_schedule == "constant" or self.iterations <= 1:
            return float(self.lr)
        t = min(max(step, 0), self.iterations - 1) / (self.iterations - 1)
        low = self.lr * self.lr_min_factor
        return float(low + (self.lr - low) * 0.5 * (1.0 + math.cos(math.pi * t)))

    @property
    def target(self) -> Literal["distance", "classes"]:
        return "distance" if self.loss == "balanced_mse" else "classes"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "unet":
                v = v.to_dict()
            elif f.name == "classes":
                v = [c.to_dict() for c in v]
            elif f.name == "augmentation":
                v = v.to_dict()
            elif f.name == "preprocessing":
                v = [dict(s) for s in v]
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known: {sorted(known)}")
        for required in ("unet", "classes"):
            if required not in d:
                raise ValueError(f"TrainConfig needs {required!r}")
        kw = dict(d)
        kw["unet"] = UNetConfig.from_dict(d["unet"])
        kw["classes"] = tuple(ClassSpec.from_dict(c) for c in d["classes"])
        if "augmentation" in kw:
            kw["augmentation"] = Augmentation.from_dict(kw["augmentation"])
        for key in ("output_shape", "betas", "preprocessing"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **_dictify(changes)})


def _dictify(changes: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in changes.items():
        if hasattr(v, "to_dict"):
            v = v.to_dict()
        elif k == "classes":
            v = [c.to_dict() for c in v]
        out[k] = v
    return out


def resolve_device(device: Device) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("TrainConfig.device is 'cuda' but no CUDA device is available")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def library_versions() -> dict[str, str]:
    out = {"torch": str(torch.__version__)}
    for package in ("numpy", "edt", "connected-components-3d", "tensorstore"):
        with suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    return out


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict (tensors on CPU) and check its format."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    ckpt: dict[str, Any] = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: not a {CHECKPOINT_FORMAT} checkpoint")
    return ckpt


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[UNet, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint (eval mode) with its config and the checkpoint dict."""
    ckpt = read_checkpoint(path)
    config = TrainConfig.from_dict(ckpt["config"])
    model = UNet(config.unet)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, config, ckpt


def transfer_weights(model: UNet, source: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy every tensor of ``source`` whose name and shape match; return what was loaded and
    what was skipped. Raises when an encoder tensor cannot be transferred."""
    own = model.state_dict()
    loaded, skipped = [], []
    for name, tensor in own.items():
        src = source.get(name)
        if src is not None and tuple(src.shape) == tuple(tensor.shape):
            with torch.no_grad():
                tensor.copy_(src)
            loaded.append(name)
        else:
            if name.startswith("encoder."):
                got = None if src is None else list(src.shape)
                raise ValueError(
                    f"cannot transfer encoder tensor {name}: source shape {got}, "
                    f"model shape {list(tensor.shape)} (architectures differ)"
                )
            skipped.append(name)
    return {"loaded": loaded, "skipped": skipped}


MetricsCallback = Callable[[dict[str, Any]], None]


class Trainer:
    """Trains a :class:`UNet` on batches from a :class:`PatchSampler` (see the module doc)."""

    def __init__(
        self,
        config: TrainConfig,
        sampler: PatchSampler,
        out_dir: str | Path | None = None,
        *,
        data_versions: Mapping[str, str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.config = config
        self.sampler = sampler
        self._check_sampler()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.data_versions = {**sampler.data_versions(), **dict(data_versions or {})}
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(config.device)
        self.amp = config.mixed_precision and self.device.type == "cuda"
        torch.manual_seed(config.seed)
        self.model = UNet(config.unet).to(self.device)
        self.init_report: dict[str, Any] = {"from": None}
        if config.init_from is not None:
            src = read_checkpoint(config.init_from)
            report = transfer_weights(self.model, src["model"])
            self.init_report = {
                "from": config.init_from,
                "source_step": int(src["step"]),
                "source_data_versions": dict(src.get("data_versions", {})),
                "loaded": len(report["loaded"]),
                "skipped": report["skipped"],
            }
        if config.freeze_encoder:
            for p in self.model.encoder_parameters():
                p.requires_grad_(False)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            self.trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._window: list[float] = []
        self._window_t0 = time.perf_counter()

    def _check_sampler(self) -> None:
        c, s = self.config, self.sampler
        problems = []
        if tuple(s.input_shape) != c.input_shape:
            problems.append(f"input_shape {list(s.input_shape)} != {list(c.input_shape)}")
        if tuple(s.output_shape) != c.output_shape:
            problems.append(f"output_shape {list(s.output_shape)} != {list(c.output_shape)}")
        if s.target != c.target:
            problems.append(f"target {s.target!r} != {c.target!r}")
        if tuple(s.classes) != c.classes:
            problems.append("classes differ")
        if problems:
            raise ValueError(f"sampler does not match the TrainConfig: {'; '.join(problems)}")

    # --- training ------------------------------------------------------------------------------

    def _tensors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = torch.from_numpy(batch.raw).to(self.device)
        target = torch.from_numpy(batch.target).to(self.device)
        mask = torch.from_numpy(batch.mask).to(self.device)
        return raw, target, mask

    def loss(self, batch: Batch) -> torch.Tensor:
        raw, target, mask = self._tensors(batch)
        ctx = torch.autocast(device_type="cuda", dtype=torch.float16) if self.amp else nullcontext()
        with ctx:
            pred = self.model(raw)
        if self.config.loss == "balanced_mse":
            return balanced_mse(pred, target, mask)
        target = torch.where(mask[:, 0], target, torch.full_like(target, IGNORE_INDEX))
        return balanced_cross_entropy(pred, target)

    def train_step(self, batch: Batch) -> float:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        # torch's Tensor.backward is untyped in its stubs
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return float(loss.detach())

    def fit(
        self, iterations: int | None = None, callback: MetricsCallback | None = None
    ) -> list[dict[str, Any]]:
        """Train until ``self.step == iterations`` (default: the config's budget); returns the
        metrics records (every ``metrics_every`` steps and at the end)."""
        until = self.config.iterations if iterations is None else int(iterations)
        records = []
        self._window_t0 = time.perf_counter()
        while self.step < until:
            batch = self.sampler.batch(self.step, self.config.batch_size)
            self._window.append(self.train_step(batch))
            if self.step % self.config.metrics_every == 0 or self.step == until:
                records.append(self._record(callback))
            if (
                self.out_dir is not None
                and self.config.checkpoint_every
                and self.step % self.config.checkpoint_every == 0
            ):
                self.save(self.out_dir / "latest.pt")
        return records

    def _record(self, callback: MetricsCallback | None) -> dict[str, Any]:
        dt = max(time.perf_counter() - self._window_t0, 1e-9)
        n = len(self._window)
        vox = n * self.config.batch_size * math.prod(self.config.output_shape)
        rec = {
            "step": self.step,
            "loss": float(np.mean(self._window)) if n else float("nan"),
            "steps": n,
            "seconds": dt,
            "output_voxels_per_s": vox / dt,
            "input_voxels_per_s": n
            * self.config.batch_size
            * math.prod(self.config.input_shape)
            / dt,
            "lr": self.config.lr_at(self.step - 1),
            "rejected_patches": self.sampler.rejected,
        }
        self.history.append(rec)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if callback is not None:
            callback(rec)
        self._window = []
        self._window_t0 = time.perf_counter()
        return rec

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": list(self.history),
            "data_versions": dict(self.data_versions),
            "sampler": json.loads(json.dumps(self.sampler.describe())),
            "init": json.loads(json.dumps(self.init_report)),
            "library_versions": library_versions(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        atomic_torch_save(self.checkpoint(), p)
        return p

    @classmethod
    def resume(
        cls,
        path: str | Path,
        sampler: PatchSampler,
        out_dir: str | Path | None = None,
        *,
        config: TrainConfig | None = None,
        threads: int | None = None,
    ) -> Trainer:
        """Continue a run from its checkpoint (model, optimizer, step, history). ``config`` may
        change only the budget and bookkeeping (iterations, metrics/checkpoint cadence)."""
        ckpt = read_checkpoint(path)
        saved = TrainConfig.from_dict(ckpt["config"])
        if config is not None:
            allowed = {"iterations", "metrics_every", "checkpoint_every", "device"}
            a, b = saved.to_dict(), config.to_dict()
            changed = sorted(k for k in a if a[k] != b[k] and k not in allowed)
            if changed:
                raise ValueError(f"{path}: resuming with a different config changes {changed}")
            saved = config
        # the init source was already applied to the saved weights: do not reload it
        trainer = cls(
            saved.replace(init_from=None, freeze_encoder=False),
            sampler,
            out_dir,
            data_versions=ckpt.get("data_versions"),
            threads=threads,
        )
        trainer.config = saved
        if saved.freeze_encoder:
            for p in trainer.model.encoder_parameters():
                p.requires_grad_(False)
            trainer.trainable = [p for p in trainer.model.parameters() if p.requires_grad]
            trainer.optimizer = torch.optim.Adam(
                trainer.trainable, lr=saved.lr, betas=saved.betas, weight_decay=saved.weight_decay
            )
        trainer.model.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"])
        trainer.step = int(ckpt["step"])
        trainer.history = list(ckpt.get("history", []))
        trainer.init_report = dict(ckpt.get("init", {}))
        return trainer


def build_sampler(
    config: TrainConfig,
    raw: Any,
    labels: Any,
    *,
    label_offset: Sequence[int] = (0, 0, 0),
    pipeline: Any = None,
    **kwargs: Any,
) -> PatchSampler:
    """A :class:`PatchSampler` whose shapes, target kind, classes and augmentation match
    ``config`` (``pipeline`` defaults to the config's pre-processing steps)."""
    from fib_assets.core.ml.preprocess import Pipeline

    return PatchSampler(
        raw,
        labels,
        config.classes,
        input_shape=config.input_shape,
        output_shape=config.output_shape,
        target=config.target,
        pipeline=pipeline if pipeline is not None else Pipeline.from_dict(config.preprocessing),
        augmentation=config.augmentation,
        label_offset=label_offset,
        min_annotated=config.min_annotated,
        seed=config.seed,
        **kwargs,
    )


def checkpoint_smoke_test(path: Path) -> dict[str, Any]:
    """Load a checkpoint and run one forward pass on the smallest valid input (seeded noise):
    the output must have the declared shape and be finite."""
    ckpt = read_checkpoint(path)
    config = TrainConfig.from_dict(ckpt["config"])
    model = UNet(config.unet)
    model.load_state_dict(ckpt["model"])
    model.eval()
    shape = config.input_shape
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal((1, 1, *shape)).astype(np.float32)
    )
    with torch.no_grad():
        y = model(x)
    want = [1, config.unet.out_channels, *config.output_shape]
    return {
        "input_shape": list(shape),
        "output_shape": list(y.shape),
        "expected_shape": want,
        "finite": bool(torch.isfinite(y).all()),
        "ok": list(y.shape) == want and bool(torch.isfinite(y).all()),
    }
