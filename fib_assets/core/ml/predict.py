"""Blockwise inference over whole volumes, with a halo, bounded memory and done markers.

Output: one Zarr v3 group (written with tensorstore, at a local path or an ``s3://`` URL through
:mod:`fib_assets.core.storage`: tensorstore's s3 kvstore for the arrays, storage for the group
JSON, block markers as files or objects) laid out as OME-NGFF single-level images::

    <out>.zarr/                 attributes "fib_assets": checkpoint, config, plan, classes,
                                threshold 127, complete flag, max instance ids
      predictions/<class>/s0    uint8 (z, y, x): tanh output as round((p + 1) * 127.5), or the
                                class probability as round(p * 255); > 127 is foreground
      fragments/<class>/s0      uint64: connected components of one block (pass 1)
      instances/<class>/s0      uint64: connected components of the whole volume, 1..N

Pass 1 (one block at a time, :func:`fib_assets.core.blockwise.run_plan`): read the block's
write ROI grown by the network context (mirror-padded at the volume border) through the
pre-processing pipeline, run the network on a fixed input shape, crop to the write ROI, store
the uint8 maps and the thresholded 6-connected components (connected-components-3d) with ids
made unique by a per-block base. Pass 2: union-find over the fragment pairs that touch across
every face between neighbouring blocks. Pass 3 (blockwise): write final ids, consecutive in the
order of each object's smallest fragment id. Every block's marker is written only after its
outputs were stored and read back; a failing block leaves none, and a rerun redoes only
missing blocks. On an object store the container is marked complete (``<out>.complete.json``)
after its attributes say so. A checkpoint on an object store is read through a verified local
copy (:func:`fib_assets.core.storage.fetch`); plans record its URL.

With valid padding the network is translation-equivariant for shifts that are multiples of its
total downsampling factor, so with such block shapes the blockwise result equals one
whole-volume forward pass (:func:`predict_whole`) up to float rounding.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorstore as ts
import torch
from scipy import ndimage

from fib_assets.core import storage
from fib_assets.core.blockwise import fingerprint, run_plan
from fib_assets.core.formats import open_volume
from fib_assets.core.formats.base import VolumeSource
from fib_assets.core.formats.zarr import multiscales_metadata
from fib_assets.core.geometry import Block, BlockPlan, Roi, VoxelSize
from fib_assets.core.ml.preprocess import Pipeline, PreprocessedVolume
from fib_assets.core.ml.targets import UINT8_THRESHOLD, probability_to_uint8, tanh_to_uint8
from fib_assets.core.ml.train import TrainConfig, load_model
from fib_assets.core.ml.unet import UNet
from fib_assets.core.provenance.fixity import sha256_file

BlockHook = Callable[[Block], None]

# connected-components-3d is several times faster than scipy.ndimage.label; both give the same
# 6-connected components, so scipy keeps this module working where cc3d is not installed
_CC3D: ModuleType | None = (
    importlib.import_module("cc3d") if importlib.util.find_spec("cc3d") is not None else None
)


def label_components(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.uint64], int]:
    """6-connected (face-adjacent) components of a (z, y, x) mask: labels 1..n and n."""
    m = np.ascontiguousarray(mask, dtype=bool)
    if _CC3D is not None:
        labels, n = _CC3D.connected_components(m, connectivity=6, return_N=True)
    else:
        labels, n = ndimage.label(m)
    return np.asarray(labels, dtype=np.uint64), int(n)


@dataclass(frozen=True)
class PredictionPlan:
    """Describe-then-do: everything that determines a prediction container.

    Shapes (z, y, x) in voxels. ``context`` is read on each side of a block; the network runs
    on ``net_input`` and its ``net_output`` (>= ``block_shape``) is cropped to the block.
    """

    raw: str
    out_path: str
    checkpoint: str
    checkpoint_sha256: str
    volume_shape: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    block_shape: tuple[int, int, int]
    context: tuple[int, int, int]
    net_input: tuple[int, int, int]
    net_output: tuple[int, int, int]
    classes: tuple[str, ...]
    instance_classes: tuple[str, ...]
    preprocessing: tuple[dict[str, Any], ...]
    output_kind: str  # "tanh" or "softmax"

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "out_path": self.out_path,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "volume_shape": list(self.volume_shape),
            "voxel_size_nm": list(self.voxel_size_nm),
            "block_shape": list(self.block_shape),
            "context": list(self.context),
            "net_input": list(self.net_input),
            "net_output": list(self.net_output),
            "classes": list(self.classes),
            "instance_classes": list(self.instance_classes),
            "preprocessing": [dict(s) for s in self.preprocessing],
            "output_kind": self.output_kind,
            "threshold_uint8": UINT8_THRESHOLD,
        }

    @property
    def block_plan(self) -> BlockPlan:
        return BlockPlan(self.volume_shape, self.block_shape)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())


@dataclass(frozen=True)
class PredictionResult:
    path: str
    plan: PredictionPlan
    seconds: float
    blocks_computed: int
    blocks_total: int
    instance_counts: dict[str, int]

    @property
    def voxels_per_s(self) -> float:
        return math.prod(self.plan.volume_shape) / max(self.seconds, 1e-9)


def _source(raw: str | Path | VolumeSource) -> tuple[VolumeSource, str]:
    if isinstance(raw, str | Path):
        return open_volume(raw), str(raw)
    return raw, type(raw).__name__


def network_geometry(
    config: TrainConfig, block_shape: Sequence[int], halo: Sequence[int] | None = None
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """(context per side, network input, network output) for blocks of ``block_shape``.

    Valid padding: the context is the network's own and ``block_shape`` must be a multiple of
    the total downsampling factor (what makes blocks equal one whole pass). Same padding:
    ``halo`` voxels per side (default: the total factor) are added and cropped away.
    """
    unet = config.unet
    block = tuple(int(b) for b in block_shape)
    if len(block) != 3 or any(b < 1 for b in block):
        raise ValueError(f"block_shape must be 3 positive ints (z, y, x), got {list(block_shape)}")
    f = unet.total_factor
    if unet.padding == "valid":
        bad = [b for b, ff in zip(block, f, strict=True) if b % ff]
        if bad:
            raise ValueError(
                f"block_shape {list(block)} must be a multiple of the network's total "
                f"downsampling factor {list(f)} per axis, so blocks align with its pooling grid"
            )
        ctx = unet.context
        net_in = unet.input_shape_for_output(block)
        net_out = unet.output_shape(net_in)
    else:
        ctx_t = tuple(int(h) for h in (halo if halo is not None else f))
        ctx = (ctx_t[0], ctx_t[1], ctx_t[2])
        want = [b + 2 * c for b, c in zip(block, ctx, strict=True)]
        net_in = unet.valid_input_shape_at_least(want)
        net_out = net_in
    return ctx, net_in, net_out


def _default_block(config: TrainConfig) -> tuple[int, int, int]:
    f = config.unet.total_factor
    b = [max(ff, math.ceil(64 / ff) * ff) for ff in f]
    return (b[0], b[1], b[2])


def plan_prediction(
    checkpoint: str | Path,
    raw: str | Path | VolumeSource,
    out_path: str | Path,
    *,
    block_shape: Sequence[int] | None = None,
    instance_classes: Sequence[str] = (),
    halo: Sequence[int] | None = None,
    refit_preprocessing: bool = True,
) -> PredictionPlan:
    """Describe predicting ``raw`` with ``checkpoint`` into ``out_path`` (a ``.zarr`` dir);
    both may be local paths or ``s3://`` URLs.

    The checkpoint's pre-processing steps are re-fitted on ``raw`` (percentiles, mean/std of
    the volume being predicted) unless ``refit_preprocessing`` is false, in which case the
    numbers fitted on the training volume are reused.
    """
    local_checkpoint = storage.fetch(checkpoint)
    _, config, ckpt = load_model(local_checkpoint)
    source, name = _source(raw)
    info = source.info
    block = tuple(block_shape) if block_shape is not None else _default_block(config)
    ctx, net_in, net_out = network_geometry(config, block, halo)
    names = tuple(c.name for c in config.classes)
    unknown = [c for c in instance_classes if c not in names]
    if unknown:
        raise ValueError(f"instance_classes {unknown} are not among the model's classes {names}")
    if refit_preprocessing:
        pipeline = Pipeline.from_dict(config.preprocessing).fit(source)
    else:
        pipeline = Pipeline.from_dict(ckpt.get("sampler", {}).get("preprocessing", []))
    return PredictionPlan(
        raw=name,
        out_path=storage.normalize(out_path),
        checkpoint=storage.normalize(checkpoint),
        checkpoint_sha256=sha256_file(local_checkpoint),
        volume_shape=info.shape,
        voxel_size_nm=info.voxel_size.as_tuple(),
        block_shape=(int(block[0]), int(block[1]), int(block[2])),
        context=ctx,
        net_input=net_in,
        net_output=net_out,
        classes=names,
        instance_classes=tuple(instance_classes),
        preprocessing=tuple(pipeline.to_dict()),
        output_kind="tanh" if config.loss == "balanced_mse" else "softmax",
    )


# --- the network on one ROI ------------------------------------------------------------------


class BlockPredictor:
    """Runs the network for output ROIs of a volume (float maps, (C, z, y, x))."""

    def __init__(
        self,
        model: UNet,
        volume: PreprocessedVolume,
        context: Sequence[int],
        net_input: Sequence[int],
        output_kind: str,
        device: torch.device | None = None,
    ) -> None:
        self.model = model.eval()
        self.volume = volume
        self.context = tuple(int(c) for c in context)
        self.net_input = tuple(int(n) for n in net_input)
        self.output_kind = output_kind
        self.device = device or next(model.parameters()).device

    @torch.no_grad()
    def predict(self, roi: Roi) -> npt.NDArray[np.float32]:
        """Class maps of ``roi``: tanh values, or class probabilities (background dropped)."""
        off = tuple(o - c for o, c in zip(roi.offset, self.context, strict=True))
        x = self.volume.read_padded(Roi(off, self.net_input))  # type: ignore[arg-type]
        t = torch.from_numpy(x)[None, None].to(self.device)
        y = self.model(t)
        if self.output_kind == "softmax":
            y = torch.softmax(y.float(), dim=1)[:, 1:]
        out = y[0].float().cpu().numpy()
        # the output's first voxel sits (input - output) / 2 voxels into the input
        lo = [
            c - (n - o) // 2
            for c, n, o in zip(self.context, self.net_input, out.shape[1:], strict=True)
        ]
        return np.ascontiguousarray(
            out[
                :,
                lo[0] : lo[0] + roi.shape[0],
                lo[1] : lo[1] + roi.shape[1],
                lo[2] : lo[2] + roi.shape[2],
            ]
        )

    def to_uint8(self, maps: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        return tanh_to_uint8(maps) if self.output_kind == "tanh" else probability_to_uint8(maps)


def predict_whole(
    checkpoint: str | Path,
    raw: str | Path | VolumeSource,
    *,
    refit_preprocessing: bool = True,
) -> npt.NDArray[np.float32]:
    """One un-blocked forward pass over the whole (mirror-padded) volume: (C, z, y, x) maps.

    For reference and small volumes only: memory grows with the volume.
    """
    model, config, _ = load_model(checkpoint)
    source, _ = _source(raw)
    shape = source.info.shape
    pipeline = Pipeline.from_dict(config.preprocessing)
    pipeline = pipeline.fit(source) if refit_preprocessing else pipeline
    if config.unet.padding == "valid":
        ctx = config.unet.context
        net_in = config.unet.input_shape_for_output(shape)
    else:
        ctx = (0, 0, 0)
        net_in = config.unet.valid_input_shape_at_least(shape)
    kind = "tanh" if config.loss == "balanced_mse" else "softmax"
    predictor = BlockPredictor(model, PreprocessedVolume(source, pipeline), ctx, net_in, kind)
    return predictor.predict(Roi((0, 0, 0), shape))


# --- storage -----------------------------------------------------------------------------------


def _array_spec(
    location: str, shape: Sequence[int], chunks: Sequence[int], dtype: str
) -> dict[str, Any]:
    endian = {} if np.dtype(dtype).itemsize == 1 else {"configuration": {"endian": "little"}}
    return {
        "driver": "zarr3",
        "kvstore": storage.tensorstore_kvstore(location),
        "metadata": {
            "shape": list(shape),
            "data_type": np.dtype(dtype).name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [
                {"name": "bytes", **endian},
                {"name": "zstd", "configuration": {"level": 3, "checksum": True}},
            ],
            "dimension_names": ["z", "y", "x"],
        },
    }


def _group(location: str, attributes: dict[str, Any]) -> None:
    storage.write_json(
        storage.join(location, "zarr.json"),
        {"zarr_format": 3, "node_type": "group", "attributes": attributes},
    )


class ArrayStore:
    """Arrays (z, y, x) of one container, each an OME-NGFF single-level image ``kind/name/s0``,
    chunked like the blocks so that a block writes whole chunks (created or reopened). ``root``
    is a local path or an ``s3://`` URL."""

    def __init__(
        self,
        root: str | Path,
        shape: Sequence[int],
        chunks: Sequence[int],
        voxel_size_nm: Sequence[float],
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self.root = storage.normalize(root)
        self.shape = tuple(int(s) for s in shape)
        self.chunks = tuple(min(int(c), s) for c, s in zip(chunks, self.shape, strict=True))
        self.voxel_size = VoxelSize(*(float(v) for v in voxel_size_nm))
        self.arrays: dict[str, Any] = {}
        if not storage.exists(storage.join(self.root, "zarr.json")):
            _group(self.root, {"fib_assets": {**(attributes or {}), "complete": False}})

    def ensure(self, kind: str, name: str, dtype: str) -> str:
        key = f"{kind}/{name}"
        if key in self.arrays:
            return key
        image = storage.join(self.root, kind, name)
        if not storage.exists(storage.join(self.root, kind, "zarr.json")):
            _group(storage.join(self.root, kind), {})
        if not storage.exists(storage.join(image, "zarr.json")):
            ome = multiscales_metadata(
                name, n_levels=1, voxel_size=self.voxel_size, channel_axis=False
            )
            _group(image, {"ome": ome})
        spec = _array_spec(storage.join(image, "s0"), self.shape, self.chunks, dtype)
        self.arrays[key] = ts.open(spec, create=True, open=True).result()
        return key

    def write(self, key: str, roi: Roi, data: npt.NDArray[Any]) -> str:
        """Store ``data`` at ``roi``, read it back, return its sha256 (raises if different)."""
        arr = self.arrays[key]
        arr[roi.to_slices()].write(data).result()
        back = np.asarray(arr[roi.to_slices()].read().result())
        if not np.array_equal(back, data):
            raise OSError(f"{self.root}/{key}: block {roi.to_dict()} read back differs")
        return hashlib.sha256(np.ascontiguousarray(data).data).hexdigest()

    def read(self, key: str, roi: Roi) -> npt.NDArray[Any]:
        return np.asarray(self.arrays[key][roi.to_slices()].read().result())

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        _group(self.root, {"fib_assets": attributes})


def default_ledger_dir(out_path: str | Path) -> Path | str:
    """Where the block markers of ``out_path`` live: a hidden folder beside it (a local
    directory, or an object prefix beside an ``s3://`` container)."""
    if not storage.is_remote(out_path):
        p = Path(out_path)
        return p.with_name(f".{p.name}.blocks")
    return storage.join(storage.parent(out_path), f".{storage.name(out_path)}.blocks")


# --- the three passes --------------------------------------------------------------------------


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(a, a) != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller id is the root: deterministic final numbering
            self.parent[max(ra, rb)] = min(ra, rb)


def _face_pairs(store: ArrayStore, key: str, plan: BlockPlan) -> npt.NDArray[np.uint64]:
    """Unique (a, b) fragment pairs touching across any face between neighbouring blocks;
    reads only the two voxel planes on both sides of each face."""
    pairs: list[npt.NDArray[np.uint64]] = []
    for block in plan.blocks():
        w = block.write_roi
        for axis in range(3):
            if w.end[axis] >= plan.volume_shape[axis]:
                continue
            off = list(w.offset)
            off[axis] = w.end[axis] - 1
            shape = list(w.shape)
            shape[axis] = 2  # last plane of this block, first plane of the next one
            slab = store.read(key, Roi((off[0], off[1], off[2]), (shape[0], shape[1], shape[2])))
            a = np.take(slab, 0, axis=axis).ravel()
            b = np.take(slab, 1, axis=axis).ravel()
            both = (a > 0) & (b > 0)
            if both.any():
                pairs.append(np.unique(np.stack([a[both], b[both]], axis=1), axis=0))
    if not pairs:
        return np.zeros((0, 2), dtype=np.uint64)
    return np.unique(np.concatenate(pairs), axis=0)


def _merge_table(
    pairs: npt.NDArray[np.uint64], fragment_ids: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint64]:
    """Final id (1..N) of every fragment (``fragment_ids`` sorted), merging ``pairs``; ids
    follow the order of each object's smallest fragment id."""
    uf = _UnionFind()
    for a, b in pairs.tolist():
        uf.union(int(a), int(b))
    roots = np.fromiter(
        (uf.find(int(f)) for f in fragment_ids.tolist()), np.uint64, len(fragment_ids)
    )
    _, inverse = np.unique(roots, return_inverse=True)
    return (inverse.astype(np.uint64) + 1).astype(np.uint64)


def connected_components_blockwise(
    foreground: Callable[[Roi], npt.NDArray[np.bool_]],
    store: ArrayStore,
    name: str,
    block_shape: Sequence[int],
    ledger_root: str | Path,
    plan_fingerprint: str,
    *,
    progress: bool = False,
) -> int:
    """6-connected components of a boolean volume, blockwise, written to
    ``store`` as ``instances/<name>`` (uint64, 1..N); returns N.

    Pass 1 labels each block with cc3d and offsets its ids by ``block index * block voxels``
    (``fragments/<name>``); pass 2 unions fragments that touch across block faces; pass 3
    writes final ids. Each pass is resumable (markers after the block is stored); memory is one
    block plus the fragment table (one entry per fragment).
    """
    plan = BlockPlan(store.shape, block_shape)  # type: ignore[arg-type]
    frag_ledger = storage.block_ledger(ledger_root, plan_fingerprint, prefix=f"fragments-{name}-")
    ledger = storage.block_ledger(ledger_root, plan_fingerprint, prefix=f"instances-{name}-")
    if not storage.exists(storage.join(store.root, "fragments", name, "s0", "zarr.json")):
        # markers without the arrays they describe (removed by hand) must not be trusted
        storage.forget_blocks(frag_ledger)
        storage.forget_blocks(ledger)
    frag_key = store.ensure("fragments", name, "uint64")
    inst_key = store.ensure("instances", name, "uint64")
    g = plan.grid_shape
    per_block = math.prod(plan.block_shape)

    def pass1(block: Block) -> dict[str, Any]:
        labels, n = label_components(foreground(block.write_roi))
        base = ((block.index[0] * g[1] + block.index[1]) * g[2] + block.index[2]) * per_block
        frag = np.where(labels > 0, labels.astype(np.uint64) + np.uint64(base), np.uint64(0))
        sha = store.write(frag_key, block.write_roi, frag.astype(np.uint64))
        return {"base": int(base), "n": int(n), "sha256": sha}

    done = run_plan(plan, pass1, frag_ledger, progress=progress, desc=f"components {name}")
    # the merge table is derived from the stored fragments and the markers: kept in the ledger's
    # local directory (beside the markers locally, the pod's cache on an object store), and
    # recomputed identically by a pod that does not have it
    table_path = ledger.directory / f"instances-{name}-merge.npz"
    if not table_path.exists():
        ids = [
            np.arange(1, info["n"] + 1, dtype=np.uint64) + np.uint64(info["base"])
            for info in done.values()
        ]
        fragment_ids = np.sort(np.concatenate(ids)) if ids else np.zeros(0, np.uint64)
        final = _merge_table(_face_pairs(store, frag_key, plan), fragment_ids)
        table_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = table_path.with_name(f".{table_path.stem}.tmp.npz")
        np.savez(tmp, fragment_ids=fragment_ids, final=final)
        tmp.replace(table_path)
    with np.load(table_path) as table:
        fragment_ids, final = table["fragment_ids"], table["final"]

    def pass3(block: Block) -> dict[str, Any]:
        frag = store.read(frag_key, block.write_roi)
        out = np.zeros(frag.shape, dtype=np.uint64)
        nz = frag > 0
        if nz.any():
            out[nz] = final[np.searchsorted(fragment_ids, frag[nz])]
        return {"sha256": store.write(inst_key, block.write_roi, out)}

    run_plan(plan, pass3, ledger, progress=progress, desc=f"relabel {name}")
    return int(final.max()) if final.size else 0


def predict_volume(
    plan: PredictionPlan,
    *,
    raw: VolumeSource | None = None,
    ledger_dir: str | Path | None = None,
    block_hook: BlockHook | None = None,
    progress: bool = False,
    device: str = "cpu",
    keep_fragments: bool = True,
) -> PredictionResult:
    """Execute ``plan`` (resumable; see the module doc). ``raw`` overrides opening
    ``plan.raw`` by path (e.g. an in-memory source in tests). ``block_hook`` is called with
    every block after inference and before its outputs are stored (progress reporting,
    failure injection)."""
    t0 = time.perf_counter()
    local_checkpoint = storage.fetch(plan.checkpoint)
    model, config, _ = load_model(local_checkpoint, device=device)
    if sha256_file(local_checkpoint) != plan.checkpoint_sha256:
        raise ValueError(f"{plan.checkpoint} changed since the plan was made (sha256 differs)")
    source = raw if raw is not None else open_volume(plan.raw)
    if tuple(source.info.shape) != plan.volume_shape:
        raise ValueError(
            f"{plan.raw}: volume shape {list(source.info.shape)} is not the planned "
            f"{list(plan.volume_shape)}"
        )
    volume = PreprocessedVolume(source, Pipeline.from_dict(plan.preprocessing))
    predictor = BlockPredictor(model, volume, plan.context, plan.net_input, plan.output_kind)
    ledger_root = ledger_dir if ledger_dir is not None else default_ledger_dir(plan.out_path)
    fp = plan.fingerprint
    ledger = storage.block_ledger(ledger_root, fp, prefix="predict-")
    if not storage.exists(storage.join(plan.out_path, "zarr.json")):
        # markers without the container they describe (removed by hand) must not be trusted
        storage.clear_ledger(ledger)
    store = ArrayStore(
        plan.out_path,
        plan.volume_shape,
        plan.block_shape,
        plan.voxel_size_nm,
        {"plan": plan.to_dict()},
    )
    keys = [store.ensure("predictions", name, "uint8") for name in plan.classes]
    computed = 0

    def pass1(block: Block) -> dict[str, Any]:
        nonlocal computed
        maps = predictor.to_uint8(predictor.predict(block.write_roi))
        if block_hook is not None:
            block_hook(block)
        sha = {
            name: store.write(key, block.write_roi, maps[k])
            for k, (name, key) in enumerate(zip(plan.classes, keys, strict=True))
        }
        computed += 1
        return {"sha256": sha}

    run_plan(plan.block_plan, pass1, ledger, progress=progress, desc="predict")
    counts: dict[str, int] = {}
    for name in plan.instance_classes:
        key = f"predictions/{name}"

        def foreground(roi: Roi, key: str = key) -> npt.NDArray[np.bool_]:
            return np.asarray(store.read(key, roi) > UINT8_THRESHOLD)

        counts[name] = connected_components_blockwise(
            foreground, store, name, plan.block_shape, ledger_root, fp, progress=progress
        )
    store.set_attributes(
        {
            "plan": plan.to_dict(),
            "complete": True,
            "config": config.to_dict(),
            "max_id": counts,
            "threshold_uint8": UINT8_THRESHOLD,
        }
    )
    if not keep_fragments:
        storage.remove(storage.join(store.root, "fragments"))
    # object store: the container is published by its marker, written last (no-op locally)
    storage.mark_complete(store.root, {"plan_fingerprint": fp})
    return PredictionResult(
        path=str(store.root),
        plan=plan,
        seconds=time.perf_counter() - t0,
        blocks_computed=computed,
        blocks_total=len(plan.block_plan),
        instance_counts=counts,
    )


def read_prediction_attrs(path: str | Path) -> dict[str, Any]:
    """The ``fib_assets`` attributes of a prediction container."""
    doc = storage.read_json(storage.join(path, "zarr.json"))
    attrs: dict[str, Any] = doc["attributes"]["fib_assets"]
    return attrs


def read_array(path: str | Path, key: str) -> npt.NDArray[Any]:
    """A whole array of a prediction container (``predictions/mito`` ...), for small volumes."""
    spec = {
        "driver": "zarr3",
        "kvstore": storage.tensorstore_kvstore(storage.join(path, key, "s0")),
    }
    return np.asarray(ts.open(spec, read=True).result().read().result())


def read_container_roi(container: str | Path, key: str, roi: Roi) -> npt.NDArray[Any]:
    """Voxels of ``roi`` (z, y, x) of image ``key`` (``predictions/mito``, ``instances/mito``)
    of a prediction/segmentation container, without reading the rest."""
    location = storage.join(container, key, "s0")
    spec = {"driver": "zarr3", "kvstore": storage.tensorstore_kvstore(location)}
    arr = ts.open(spec, read=True).result()
    return np.asarray(arr[roi.to_slices()].read().result())
