"""Demo-scale training check on CPU: a tiny U-Net for mito on synthetic FIB-SEM, then transfer
learning to a second sample type. Prints ratios against references measured in the same run.

    .venv/bin/python benchmarks/training.py                 # ~15 min on 2 cores
    .venv/bin/python benchmarks/training.py --quick         # ~3 min smoke run (numbers low)

Measures:
1. Dice of mito on a held-out synthetic region (domain A) after training on another region.
2. Transfer: a model trained on A, fine-tuned on a small crop of domain B, vs the same budget
   from scratch on B (and A's model without fine-tuning), Dice on held-out B.
3. Training voxels/s (pure compute on a fixed batch), inference voxels/s, blockwise inference
   time / one unblocked forward pass for several block shapes (with the halo's compute share),
   and patch-sampler throughput / model consumption per format (goal >= 3).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fib_assets.core.ml.classes import resolve_classes
from fib_assets.core.ml.domains import (
    DOMAIN_A,
    DOMAIN_B,
    DomainVolume,
    render_domain,
    write_domain_volume,
)
from fib_assets.core.ml.predict import (
    plan_prediction,
    predict_volume,
    predict_whole,
    read_array,
)
from fib_assets.core.ml.preprocess import Augmentation
from fib_assets.core.ml.sampler import measure_throughput
from fib_assets.core.ml.train import TrainConfig, Trainer, build_sampler
from fib_assets.core.ml.unet import UNetConfig

MITO = resolve_classes(["mito"])
FORMATS = ("zarr", "hdf5", "n5", "tiff", "parquet")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.count_nonzero(pred & truth)
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 2.0 * inter / total if total else 1.0


def tiny_config(args: argparse.Namespace, iterations: int, **changes: object) -> TrainConfig:
    config = TrainConfig(
        unet=UNetConfig(
            levels=3,
            base_width=8,
            width_factor=2,
            downsample=((2, 2, 2), (2, 2, 2)),
            norm=args.norm,
        ),
        classes=MITO,
        output_shape=(args.patch,) * 3,
        batch_size=args.batch,
        iterations=iterations,
        lr=args.lr,
        lr_schedule="cosine",
        betas=(0.95, 0.999),
        seed=args.seed,
        metrics_every=max(1, iterations // 6),
        device="cpu",
        augmentation=Augmentation(),
        preprocessing=({"name": "percentile_stretch"}, {"name": "zscore"}),
    )
    return config.replace(**changes) if changes else config


def train(
    config: TrainConfig, raw: object, labels: object, out: Path, label: str
) -> tuple[Path, dict[str, float]]:
    sampler = build_sampler(config, raw, labels)
    trainer = Trainer(config, sampler, out)
    t0 = time.perf_counter()

    def show(rec: dict) -> None:
        print(
            f"  [{label}] step {rec['step']:4d}  loss {rec['loss']:.4f}  "
            f"{rec['input_voxels_per_s'] / 1e3:.0f} kvox/s in",
            flush=True,
        )

    trainer.fit(callback=show)
    seconds = time.perf_counter() - t0
    path = trainer.save(out / "model.pt")
    return path, {"seconds": seconds, "steps": trainer.step}


def evaluate(
    checkpoint: Path, vol: DomainVolume, out: Path, block: tuple[int, int, int]
) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(f".{out.name}.blocks"), ignore_errors=True)
    src = vol.raw_source()
    t0 = time.perf_counter()
    plan = plan_prediction(checkpoint, src, out, block_shape=block, instance_classes=["mito"])
    result = predict_volume(plan, raw=src)
    seconds = time.perf_counter() - t0
    pred = read_array(out, "predictions/mito") > 127
    truth = np.isin(vol.labels, MITO[0].ids)
    return {
        "dice": dice(pred, truth),
        "seconds": seconds,
        "voxels_per_s": math.prod(vol.raw.shape) / seconds,
        "instances": result.instance_counts["mito"],
    }


def compute_rate(config: TrainConfig, raw: object, labels: object, steps: int = 3) -> float:
    """Input voxels/s of pure training steps on one fixed batch (no data loading)."""
    sampler = build_sampler(config, raw, labels)
    trainer = Trainer(config, sampler)
    batch = sampler.batch(0, config.batch_size)
    trainer.train_step(batch)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    dt = time.perf_counter() - t0
    return steps * config.batch_size * math.prod(config.input_shape) / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/benchmarks/training"))
    ap.add_argument("--quick", action="store_true", help="small budget smoke run")
    ap.add_argument("--iterations", type=int, default=300, help="training steps on domain A")
    ap.add_argument("--finetune-iterations", type=int, default=150)
    ap.add_argument("--finetune-lr", type=float, default=1e-4)
    ap.add_argument("--curve-every", type=int, default=25)
    ap.add_argument("--patch", type=int, default=32, help="target patch edge (voxels)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--norm",
        choices=("batch", "none"),
        default="batch",
        help="U-Net normalization (none = COSEM's plain convolutions)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-formats", action="store_true")
    ap.add_argument("--skip-transfer", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.iterations, args.finetune_iterations, args.curve_every = 40, 20, 10
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    shape = (96, 128, 128)
    report: dict[str, object] = {"settings": vars(args) | {"out": str(out), "region": shape}}

    print("rendering synthetic regions (domain A: train seed 11, test 12; B: crop 21, test 22)")
    a_train = render_domain(DOMAIN_A, shape, seed=11)
    a_test = render_domain(DOMAIN_A, shape, seed=12)
    b_crop = render_domain(DOMAIN_B, (48, 64, 64), seed=21)
    b_test = render_domain(DOMAIN_B, shape, seed=22)
    for name, v in (
        ("A train", a_train),
        ("A test", a_test),
        ("B crop", b_crop),
        ("B test", b_test),
    ):
        frac = np.isin(v.labels, MITO[0].ids).mean()
        print(f"  {name}: {v.raw.shape}, mito {frac:.1%} of voxels")

    # --- 1. train on A (through the Zarr variant), Dice on held-out A -------------------------
    raw_path, lab_path = write_domain_volume(a_train, out / "formats", fmt="zarr", stem="a-train")
    config_a = tiny_config(args, args.iterations)
    print(
        f"training on A: {args.iterations} steps, batch {args.batch}, target {args.patch}^3, "
        f"input {config_a.input_shape[0]}^3, lr {args.lr}"
    )
    ckpt_a, stats_a = train(config_a, raw_path, lab_path, out / "model-a", "A")
    block = (48, 64, 64)
    eval_a = evaluate(ckpt_a, a_test, out / "pred-a.zarr", block)
    print(f"Dice mito, held-out A: {eval_a['dice']:.3f}  ({stats_a['seconds']:.0f} s training)")
    report["domain_a"] = {"train": stats_a, "eval": eval_a}

    # --- 2. transfer to B ---------------------------------------------------------------------
    if not args.skip_transfer:
        report["domain_b"] = transfer(args, ckpt_a, b_crop, b_test, out, block)

    # --- 3. speeds ----------------------------------------------------------------------------
    speeds(args, report, config_a, ckpt_a, raw_path, lab_path, a_train, a_test, shape, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {out / 'report.json'}")
    return 0


def learning_curve(
    config: TrainConfig,
    vol: DomainVolume,
    test: DomainVolume,
    out: Path,
    label: str,
    every: int,
    block: tuple[int, int, int],
) -> list[tuple[int, float]]:
    """Train on ``vol`` and score held-out ``test`` every ``every`` steps: [(step, Dice)]."""
    sampler = build_sampler(config, vol.raw_source(), vol.labels_source())
    trainer = Trainer(config, sampler, out)
    curve = []
    while trainer.step < config.iterations:
        trainer.fit(min(config.iterations, trainer.step + every))
        ckpt = trainer.save(out / "model.pt")
        d = evaluate(ckpt, test, out / "pred.zarr", block)["dice"]
        curve.append((trainer.step, d))
        print(f"  [{label}] step {trainer.step:4d}  Dice {d:.3f}", flush=True)
    return curve


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose Dice reaches ``target`` (None: never within the budget)."""
    return next((s for s, d in curve if d >= target), None)


def transfer(
    args: argparse.Namespace,
    ckpt_a: Path,
    b_crop: DomainVolume,
    b_test: DomainVolume,
    out: Path,
    block: tuple[int, int, int],
) -> dict[str, object]:
    """ASEM-style transfer: A's model applied as-is to B, fine-tuned on one small crop of B
    (lr ``--finetune-lr``), against the same crop from scratch (lr ``--lr``): Dice on held-out B
    every ``--curve-every`` steps, and how many steps each needs to reach the Dice that scratch
    reaches at the end of its budget."""
    zero_shot = evaluate(ckpt_a, b_test, out / "pred-b-zero.zarr", block)["dice"]
    print(f"  A model on B as-is: Dice {zero_shot:.3f}")
    n = args.finetune_iterations
    curves = {}
    for slug, cfg in (
        (
            "fine-tuned from A",
            tiny_config(args, n, init_from=str(ckpt_a), seed=args.seed + 1, lr=args.finetune_lr),
        ),
        ("scratch on B", tiny_config(args, n, seed=args.seed + 1)),
    ):
        print(f"training on the B crop {b_crop.raw.shape}: {slug}, {n} steps, lr {cfg.lr}")
        curves[slug] = learning_curve(
            cfg, b_crop, b_test, out / f"model-b-{slug.split()[0]}", slug, args.curve_every, block
        )
    target = max(d for _, d in curves["scratch on B"])
    reach = {k: steps_to(c, target) for k, c in curves.items()}
    print(f"Dice mito, held-out B (A as-is {zero_shot:.3f}):")
    for k, c in curves.items():
        print(f"  {k:20s} " + "  ".join(f"{s}:{d:.3f}" for s, d in c))
    print(
        f"steps to scratch's best Dice {target:.3f}: fine-tuned {reach['fine-tuned from A']}, "
        f"scratch {reach['scratch on B']}"
    )
    return {"zero_shot": zero_shot, "curves": curves, "target": target, "steps_to_target": reach}


def speeds(
    args: argparse.Namespace,
    report: dict[str, object],
    config_a: TrainConfig,
    ckpt_a: Path,
    raw_path: Path,
    lab_path: Path,
    a_train: DomainVolume,
    a_test: DomainVolume,
    shape: tuple[int, int, int],
    out: Path,
) -> None:
    consume = compute_rate(config_a, raw_path, lab_path)
    print(
        f"training compute: {consume / 1e6:.3f} Mvox/s of input patches "
        f"({consume * math.prod(config_a.output_shape) / math.prod(config_a.input_shape) / 1e6:.3f}"
        " Mvox/s of targets)"
    )
    src = a_test.raw_source()
    t0 = time.perf_counter()
    predict_whole(ckpt_a, src)
    whole_s = time.perf_counter() - t0
    print(
        f"inference, one unblocked forward pass over {shape}: {whole_s:.2f} s "
        f"({math.prod(shape) / whole_s / 1e6:.3f} Mvox/s)"
    )
    ctx = config_a.unet.context
    whole_in = math.prod(s + 2 * c for s, c in zip(shape, ctx, strict=True))
    ratios = {}
    for blk in ((48, 64, 64), (96, 64, 128), (96, 128, 128)):
        p = out / "pred-speed.zarr"
        shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(p.with_name(f".{p.name}.blocks"), ignore_errors=True)
        t0 = time.perf_counter()
        plan = plan_prediction(ckpt_a, src, p, block_shape=blk)
        predict_volume(plan, raw=src)
        dt = time.perf_counter() - t0
        n_blocks = len(plan.block_plan)
        halo_share = n_blocks * math.prod(plan.net_input) / whole_in
        ratios[str(blk)] = {"seconds": dt, "ratio": dt / whole_s, "compute_ratio": halo_share}
        print(
            f"  blockwise {blk}: {dt:.2f} s = {dt / whole_s:.2f} x the unblocked pass "
            f"(goal <= 1.15); network input voxels {halo_share:.2f} x (halo of {ctx} per side)"
        )
    report["inference"] = {"whole_seconds": whole_s, "blockwise": ratios}

    if not args.skip_formats:
        print("patch sampler throughput per format (distance targets, augmentation, 8 patches):")
        rows = {}
        for fmt in FORMATS:
            rp, lp = write_domain_volume(a_train, out / "formats", fmt=fmt, stem="a-train")
            sampler = build_sampler(config_a, rp, lp)
            sampler.sample(0)  # open files, warm caches
            tp = measure_throughput(sampler, 8, start=1)
            ratio = tp["voxels_per_s"] / consume
            rows[fmt] = {**tp, "ratio_to_consumption": ratio}
            print(
                f"  {fmt:8s} {tp['patches_per_s']:6.1f} patches/s  "
                f"{tp['voxels_per_s'] / 1e6:6.2f} Mvox/s  = {ratio:5.1f} x model consumption "
                "(goal >= 3)"
            )
        report["sampler"] = rows


if __name__ == "__main__":
    sys.exit(main())
