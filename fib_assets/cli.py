"""`fib-assets …`: command-line entry points for microscopists, curators and CI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="fib_assets: curate FIB-SEM volumes as Dagster assets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


@app.command("dat-header")
def dat_header(
    file: Path = typer.Argument(..., help="A Janelia enhanced FIB-SEM .dat file."),
) -> None:
    """Print the parsed .dat header as JSON (Janelia field names: FileVersion, ChanNum, …)."""
    from fib_assets.core.acquisition.dat import DatError, read_dat_header

    try:
        header = read_dat_header(file)
    except (DatError, OSError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(header.to_json_dict(), indent=2))


@app.command("dat-read")
def dat_read(
    file: Path = typer.Argument(..., help="A Janelia enhanced FIB-SEM .dat file."),
    out: Path = typer.Option(..., "--out", help="Output TIFF (channels as pages, C×Y×X)."),
) -> None:
    """Decode a .dat file's pixels into a TIFF (exit code 1 with a one-line error on bad input)."""
    import tifffile

    from fib_assets.core.acquisition.dat import DatError, read_dat

    try:
        header, pixels = read_dat(file)
    except (DatError, OSError) as exc:
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tifffile.imwrite(
        tmp,
        pixels,
        metadata={"axes": "CYX", "PixelSize_nm": header.pixel_size_nm},
        photometric="minisblack",
    )
    tmp.replace(out)
    typer.echo(f"wrote {out} {tuple(pixels.shape)} {pixels.dtype}")


def _shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"shape must be Z,Y,X integers, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 8:
        raise typer.BadParameter(f"shape must be three integers >= 8 (Z,Y,X), got {text!r}")
    return parts  # type: ignore[return-value]


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write landing/ and groundtruth/ into."),
    regions: int = typer.Option(3, "--regions", min=1, help="Number of regions (r001, r002, …)."),
    shape: str = typer.Option("64,128,128", "--shape", help="Region shape Z,Y,X in voxels."),
    seed: int = typer.Option(0, "--seed", help="Random seed (region i uses seed + i)."),
    artefacts: str = typer.Option("", "--artefacts", help="Comma-separated artefacts."),
    artefact_regions: str = typer.Option(
        "", "--artefact-regions", help="Comma-separated regions with artefacts (default: all)."
    ),
    voxel_size: float = typer.Option(8.0, "--voxel-size", help="Isotropic voxel size, nm."),
) -> None:
    """Generate a deterministic synthetic FIB-SEM sample: one landing-zone folder per region
    (.dat slices + region.yaml) and its dense ground-truth class volume."""
    from fib_assets.core.acquisition.synthetic import ARTEFACTS, write_sample

    names = [a for a in artefacts.split(",") if a]
    unknown = [a for a in names if a not in ARTEFACTS]
    if unknown:
        _fail(f"unknown artefacts {unknown}; valid: {', '.join(ARTEFACTS)}")
    infos = write_sample(
        out,
        n_regions=regions,
        shape_zyx=_shape(shape),
        seed=seed,
        artefacts=names,
        artefact_regions=[r for r in artefact_regions.split(",") if r] or None,
        voxel_size_nm=voxel_size,
        progress=True,
    )
    for info in infos:
        typer.echo(f"{info.region}: {out / 'landing' / info.region}")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """For every asset and region on the Dagster instance ($DAGSTER_HOME): materialized or not,
    data version, where its data is, and its checks' outcomes."""
    import dagster as dg

    from fib_assets.definitions import defs
    from fib_assets.demo import default_dagster_home, prepare_dagster_home
    from fib_assets.status import collect_status, format_status

    prepare_dagster_home(default_dagster_home())
    with dg.DagsterInstance.get() as instance:
        rows = collect_status(defs, instance)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        typer.echo(format_status(rows))


@app.command()
def demo(
    shape: str = typer.Option("128,160,160", "--shape", help="Demo region shape Z,Y,X."),
    seed: int = typer.Option(7, "--seed", help="Random seed of the synthetic sample."),
) -> None:
    """Synthesize a sample, register its regions and materialize every asset and check for
    every region on the embedded instance ($DAGSTER_HOME, default <repo>/.dagster_home)."""
    import dagster as dg

    from fib_assets.definitions import defs
    from fib_assets.defs.resources import StorageResource, default_data_dir
    from fib_assets.demo import (
        default_dagster_home,
        materialize_correction_round,
        materialize_evaluation,
        materialize_region,
        materialize_training,
        materialize_unpartitioned,
        prepare_dagster_home,
        register_regions,
        synthesize_demo_sample,
    )

    home = prepare_dagster_home(default_dagster_home())
    data = Path(default_data_dir())
    typer.echo(f"DAGSTER_HOME={home}\ndata={data}")
    written = synthesize_demo_sample(data, shape=_shape(shape), seed=seed)
    typer.echo(f"synthesized regions: {written or 'none (reusing the existing sample)'}")
    storage = StorageResource()
    with dg.DagsterInstance.get() as instance:
        found = register_regions(instance, Path(storage.landing_zone))
        typer.echo(f"regions: {', '.join(found)}")
        outcomes = []
        for region in found:
            typer.echo(f"materializing {region} …")
            outcomes.append(materialize_region(defs, instance, region))
        typer.echo("materializing cross-region tables …")
        tables = materialize_unpartitioned(defs, instance)
        typer.echo("training demo models and segmenting the test regions …")
        training = materialize_training(defs, instance)
        typer.echo("one simulated correction round on the training regions …")
        round_states, round_minutes, round_training = materialize_correction_round(
            defs, instance, training.split.get("train", [])
        )
        for name, state in round_training.models.items():
            training.models[name] = state
            training.validation.update(round_training.validation)
            training.test_dice.update(round_training.test_dice)
            training.segmentations.update(round_training.segmentations)
        typer.echo("evaluating the test regions and building the benchmark tables …")
        evaluated = materialize_evaluation(defs, instance, training.split.get("test", []))
    typer.echo("\nSummary")
    for o in outcomes:
        state = "reused" if o.reused else ("ok" if o.success else "stopped")
        typer.echo(f"  {o.region}: {state}")
        for c in o.failed_checks:
            typer.echo(f"      failed check {c}")
        if o.skipped_assets:
            typer.echo(
                f"      downstream not materialized (blocked): {', '.join(o.skipped_assets)}"
            )
    for name, ok in tables.items():
        typer.echo(f"  {name}: {ok}")
    split = training.split
    typer.echo(
        f"  training_split: train {', '.join(split.get('train', [])) or '-'} · validation "
        f"{', '.join(split.get('validation', [])) or '-'} · test "
        f"{', '.join(split.get('test', [])) or '-'} (test regions are never trained on)"
    )
    for name, state in training.models.items():
        val = ", ".join(f"{k} {v:.3f}" for k, v in training.validation.get(name, {}).items())
        extra = f" (validation Dice {val})" if val else ""
        typer.echo(f"  organelle_model[{name}]: {state}{extra}")
        for region, dice in training.test_dice.get(name, {}).items():
            per_class = ", ".join(f"{k} {v:.3f}" for k, v in dice.items())
            typer.echo(f"      test-region Dice {region}: {per_class}")
    failed = [k for k, v in training.segmentations.items() if v == "FAILED"]
    if failed:
        typer.echo(f"      predictions/segmentation FAILED: {', '.join(failed)}")
    typer.echo(
        f"  training part: {training.wall_seconds:.0f} s wall, {training.cpu_seconds:.0f} s CPU"
    )
    for name, state in round_states.items():
        typer.echo(f"  {name}: {state}")
    typer.echo(f"  simulated curator: {round_minutes:.0f} minutes of corrections (effort model)")
    for name, state in evaluated["states"].items():
        typer.echo(f"  {name}: {state}")
    head = evaluated["headline"]
    if "segmentation_benchmark" in head:
        df = head["segmentation_benchmark"]
        for _, r in df[df.metric == "dice"].iterrows():
            typer.echo(
                f"      Dice {r.experiment}/{r.organelle}: {r['mean']:.3f} "
                f"[{r.ci_low:.3f}, {r.ci_high:.3f}] over {r.n_regions} test region(s)"
            )
    if "intervention_benchmark" in head:
        for _, r in head["intervention_benchmark"].iterrows():
            typer.echo(
                f"      {r.curator_intervention} ({r.experiment} vs {r.baseline}) "
                f"{r.organelle}: Dice gain {r.gain:+.3f}, {r.curator_minutes:.0f} curator min, "
                f"{r.device_hours:.3f} device-h"
            )
    if "infrastructure_benchmark" in head:
        df = head["infrastructure_benchmark"]
        for (infra, kind), g in df.groupby(["infrastructure", "kind"]):
            typer.echo(
                f"      {kind} on {infra}: {len(g)} runs, {g.device_hours.sum():.3f} device-h, "
                f"{g.cost_usd.sum():.4f} USD"
            )
    typer.echo(
        f"\nData under {data}/storage; instance at {home}.\n"
        "Next: `make ui` and open http://127.0.0.1:3000 (Assets → raw_volume → Partitions), "
        "or `.venv/bin/fib-assets status`."
    )


def _instance_and_defs():  # type: ignore[no-untyped-def]
    import dagster as dg

    from fib_assets.definitions import defs
    from fib_assets.demo import default_dagster_home, prepare_dagster_home

    prepare_dagster_home(default_dagster_home())
    return dg.DagsterInstance.get(), defs


@app.command()
def audit(
    asset: str = typer.Argument(..., help="Asset key to audit, e.g. raw_volume."),
    partition: str | None = typer.Option(None, "--partition", help="Region, e.g. r001."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    html: Path | None = typer.Option(None, "--html", help="Also write the HTML report here."),
    fixity: bool = typer.Option(
        True, "--fixity/--no-fixity", help="Re-hash raw source files against their manifest."
    ),
) -> None:
    """Audit ASSET [--partition] back to its raw files: versions, runs, checks, fixity.
    Exit 0 when clean, 1 when anything is flagged, 2 on bad input."""
    from fib_assets.audit import audit_command

    instance, defs = _instance_and_defs()
    with instance:
        code = audit_command(
            defs, instance, asset, partition, as_json=as_json, html=html, fixity=fixity,
            echo=typer.echo,
        )  # fmt: skip
    raise typer.Exit(code=code)


@app.command()
def deposit(
    assets: str = typer.Option(
        "raw_acquisition,raw_volume", "--assets", help="Comma-separated assets to deposit."
    ),
    regions: str = typer.Option("", "--regions", help="Comma-separated regions (default all)."),
    allow_flagged: bool = typer.Option(
        False, "--allow-flagged", help="Deposit despite audit flags (needs --reason)."
    ),
    reason: str = typer.Option("", "--reason", help="Why the flags are acceptable (recorded)."),
    draft: bool = typer.Option(
        False, "--draft", help="Also upload as a Figshare draft (FIGSHARE_TOKEN); never publishes."
    ),
) -> None:
    """Build the deposit package (BagIt + RO-Crate + DataCite + audit) for a selection."""
    from fib_assets.audit import deposit_command

    instance, defs = _instance_and_defs()
    with instance:
        code = deposit_command(
            defs, instance, assets=[a for a in assets.split(",") if a],
            regions=[r for r in regions.split(",") if r], allow_flagged=allow_flagged,
            override_reason=reason, draft=draft, echo=typer.echo,
        )  # fmt: skip
    raise typer.Exit(code=code)


@app.command("paintera-export")
def paintera_export(
    region: str = typer.Argument(..., help="Region key, e.g. r001."),
    out: Path = typer.Option(..., "--out", help="Output container (.n5 or .zarr)."),
    labels: str = typer.Option(
        "ground-truth", "--labels", help="'ground-truth' (current revision) or 'none'."
    ),
) -> None:
    """Export a region's raw volume (+ current ground truth) as a Paintera-ready container."""
    import dagster as dg

    from fib_assets.core import storage as object_storage
    from fib_assets.core.formats.paintera import export_paintera
    from fib_assets.core.geometry import validate_region_key
    from fib_assets.core.labels import RevisionLabelSource, RevisionStore, raw_grid
    from fib_assets.defs.metadata import latest_materialization
    from fib_assets.defs.resources import StorageResource

    try:
        validate_region_key(region)
    except ValueError as exc:
        _fail(str(exc))
    instance, _ = _instance_and_defs()
    with instance:
        latest = latest_materialization(instance, dg.AssetKey("raw_volume"), region)
    if latest is None:
        _fail(f"raw_volume[{region}] is not materialized")
    raw = str(latest["metadata"]["dagster/uri"])  # type: ignore[index]
    source = None
    if labels == "ground-truth":
        store = RevisionStore(
            object_storage.join(StorageResource().root, "ground_truth_crops", region)
        )
        rev = store.current()
        if rev is None:
            _fail(f"{region} has no accepted ground-truth revision")
        source = RevisionLabelSource(rev, raw_grid(raw))  # type: ignore[arg-type]
    result = export_paintera(raw, out, labels=source)
    typer.echo(
        f"wrote {result.path} (raw {result.raw_group}, labels {result.label_group}, "
        f"maxId {result.max_id})"
    )


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    app()
