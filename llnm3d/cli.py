"""Command-line interface: parses arguments and calls the API.

Exit codes: 0 success, 1 some cases failed (the rest completed), 2 usage or input error.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer

from ._version import __version__
from .models import DEFAULT_LAYER

if TYPE_CHECKING:
    from typer._click.exceptions import UsageError

app = typer.Typer(help="3D spatial statistics of lateral lymph node metastasis in thyroid "
                       "cancer.", no_args_is_help=True, add_completion=False,
                  rich_markup_mode="markdown")

ResizeMasksOption = Annotated[bool, typer.Option(
    help="Resize masks of another size than their image to it (nearest neighbour), e.g. the "
         "LLNM-Net samples' 256x256 masks; by default a size mismatch fails the case.")]

EXIT_CASES_FAILED = 1
EXIT_INPUT_ERROR = 2

AllowOutsideOption = Annotated[bool, typer.Option(
    help="Allow manifest file paths that lead outside the manifest's folder (refused by "
         "default).")]

AtlasOption = Annotated[Path | None, typer.Option(
    "--atlas", help="Atlas folder (from `llnm3d atlas`); default: the bundled atlas.")]




def _printable(text: object) -> str:
    """``text`` with non-printable characters escaped as ``repr`` does (``\\n``, ``\\x1b``),
    printable non-ASCII kept: ids and paths in a message cannot start a line of their own or
    drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _say(line: str, err: bool = False) -> None:
    """Print one line, escaped by :func:`_printable`."""
    typer.echo(_printable(line), err=err)


def _fail(message: str) -> NoReturn:
    """Print ``error: message`` as one line and exit 2."""
    _say(f"error: {message}", err=True)
    raise typer.Exit(EXIT_INPUT_ERROR)


def _os_error_text(exc: OSError) -> str:
    """An OSError as ``cannot write FILE: reason`` (or ``FILE: reason``)."""
    reason = exc.strerror or str(exc)
    from .io import DISK_ERRNOS

    if exc.filename is None:
        return reason
    verb = "cannot write " if exc.errno in DISK_ERRNOS else ""
    return f"{verb}{exc.filename}: {reason}"


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """Turn an InputError or OSError (full disk, read-only file system) into a one-line
    message and exit code 2."""
    from .io import InputError

    try:
        yield
    except InputError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(_os_error_text(exc))


def _read_manifest(path: Path, allow_outside: bool):
    """Read a manifest for a stage, warning about columns that look like misspelt known ones
    (a typo would otherwise leave that column unused without a word)."""
    from .manifest import read_manifest

    manifest = read_manifest(path, allow_outside=allow_outside)
    for column, suggestion in manifest.extra_columns:
        if suggestion:
            _say(f"warning: column {column!r} is not one llnm3d reads; did you mean "
                 f"{suggestion!r}?", err=True)
    return manifest


def _notes(notes: list[str]) -> None:
    """Print one ``note:`` line per note."""
    for note in notes:
        _say(f"note: {note}")


def _report_failures(failures: list[tuple[str, str]], what: str) -> None:
    """Print one line per failed case and exit 1 if there were any."""
    for case_id, reason in failures:
        _say(f"failed: {what} {case_id}: {reason}", err=True)
    if failures:
        raise typer.Exit(EXIT_CASES_FAILED)


def _load_atlas(path: Path | None, spacing_mm: float = 0.5):
    from .atlas import Atlas

    return Atlas.load(path) if path else Atlas.default(spacing_mm)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llnm3d {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False):
    """llnm3d: where in the thyroid lateral lymph node metastasis risk concentrates."""


@app.command()
def atlas(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    spacing_mm: Annotated[float, typer.Option(help="Voxel size in mm.")] = 0.5,
) -> None:
    """Build the canonical thyroid atlas and write it: labels and capsule distance as NIfTI,
    the capsule surface as .glb and .stl, and atlas.json."""
    from .io import ensure_writable_dir

    with _input_errors():
        ensure_writable_dir(out)
        built = _load_atlas(None, spacing_mm)
        built.save(out)
    _say(f"atlas written to {out} ({built.spacing_mm} mm voxels, grid "
         f"{'x'.join(map(str, built.labels.shape[::-1]))}, gland volume "
         f"{built.surface.volume / 1000:.1f} mL)")


@app.command()
def phantom(
    out: Annotated[Path, typer.Option(help="Output cohort folder.")],
    patients: Annotated[int, typer.Option(help="Number of patients.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    risk_spec: Annotated[Path | None, typer.Option(
        help="Risk spec JSON (see llnm3d.phantom.risk); default: the bundled spec.")] = None,
    atlas_path: AtlasOption = None,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all "
                                                        "cores).")] = None,
) -> None:
    """Generate a synthetic cohort with planted truth (manifest, PNG images and masks,
    truth.csv/truth.json)."""
    from .phantom import RiskSpec, make_phantom

    with _input_errors():
        spec = RiskSpec.load(risk_spec) if risk_spec else RiskSpec.default()
        result = make_phantom(out, patients, seed=seed, risk_spec=spec,
                              atlas=_load_atlas(atlas_path), image_size_px=image_size,
                              workers=workers)
    _say(f"phantom cohort in {out}: {len(result.truth)} nodules, "
         f"{len(result.manifest)} images, LLNM prevalence "
         f"{result.truth['label'].mean():.1%}")
    _report_failures(result.failures, "patient")


@app.command()
def section(
    side: Annotated[str, typer.Option(help="Lobe: R or L.")],
    view: Annotated[str, typer.Option(help="transverse (axial plane) or longitudinal "
                                           "(sagittal plane).")],
    level_mm: Annotated[float, typer.Option(help="z (transverse) or x (longitudinal) of the "
                                                 "plane, atlas mm.")],
    out: Annotated[Path, typer.Option(help="Output PNG; its geometry goes to <out>.json.")],
    atlas_path: AtlasOption = None,
) -> None:
    """Write one atlas cross-section of a lobe as a mask PNG plus its mm geometry (JSON)."""
    import numpy as np
    from PIL import Image

    from .io import atomic_path, ensure_writable_dir, write_json

    with _input_errors():
        ensure_writable_dir(out.parent)
        cut = _load_atlas(atlas_path).section(side, view, level_mm)
        with atomic_path(out) as tmp:
            Image.fromarray(cut.mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        write_json(out.with_suffix(".json"), {
            "view": cut.view, "level_mm": cut.level_mm, "spacing_mm": cut.spacing_mm,
            "origin_mm": cut.origin_mm, "row_dir": cut.row_dir, "col_dir": cut.col_dir,
            "area_mm2": float(cut.mask.sum() * cut.spacing_mm ** 2)})
    _say(f"{view} section of the {side} lobe at {level_mm} mm: "
         f"{cut.mask.sum() * cut.spacing_mm ** 2:.0f} mm2, written to {out}")


@app.command("check-manifest")
def check_manifest(
    manifest: Annotated[Path, typer.Option(help="Manifest CSV.")],
    stage: Annotated[list[str] | None, typer.Option(
        help="A stage the manifest must be ready for (heatmap, register, aggregate, train; "
             "repeatable): exit 1 when it is not.")] = None,
    allow_outside: AllowOutsideOption = False,
) -> None:
    """Validate a manifest: columns (a misspelt one gets a suggestion), values, files (format
    and size from their headers) and what each later stage needs. Lists each bad case by id
    and says which stages the manifest is ready for.

    Exit 1 when some rows have problems, or a stage given with --stage is not ready; stage
    readiness alone is information."""
    from .checks import check_choice
    from .manifest_check import STAGES
    from .manifest_check import check_manifest as run_check

    with _input_errors():
        for name in stage or []:
            check_choice("stage", name, STAGES)
        result = run_check(manifest, allow_outside=allow_outside)
    for line in [*result.column_lines(), *result.summary_lines()]:
        _say(line)
    not_ready = [name for name in dict.fromkeys(stage or []) if not result.stage(name).ready]
    for name in not_ready:
        _say(f"failed: stage {name}: not ready", err=True)
    _report_failures(result.problems, "case")
    if not_ready:
        raise typer.Exit(EXIT_CASES_FAILED)


@app.command("contact-sheet")
def contact_sheet(
    manifest: Annotated[Path, typer.Option(help="Manifest CSV.")],
    out: Annotated[Path, typer.Option(help="Output PNG.")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 8,
    allow_outside: AllowOutsideOption = False,
) -> None:
    """Draw the first images of a manifest with thyroid (yellow) and nodule (red) outlines."""
    from .io import ensure_writable_dir
    from .models.qc import contact_sheet as draw

    with _input_errors():
        ensure_writable_dir(out.parent)
        draw(_read_manifest(manifest, allow_outside), out, n=n)
    _say(f"contact sheet written to {out}")


@app.command()
def features(
    manifest: Annotated[Path, typer.Option(help="Manifest CSV.")],
    out: Annotated[Path, typer.Option(help="Output CSV (one row per image).")],
    resize_masks: ResizeMasksOption = False,
    allow_outside: AllowOutsideOption = False,
) -> None:
    """Morphology features (shape, echogenicity contrast, margin, texture) per image."""
    from .io import ensure_writable_dir
    from .models.features import write_features

    with _input_errors():
        ensure_writable_dir(out.parent)
        failures = write_features(_read_manifest(manifest, allow_outside), out,
                                  resize_masks=resize_masks)
    _say(f"features written to {out}")
    _report_failures(failures, "case")


@app.command()
def train(
    manifest: Annotated[Path, typer.Option(help="Manifest CSV with labels.")],
    view: Annotated[str, typer.Option(help="transverse or longitudinal.")],
    out: Annotated[Path, typer.Option(help="Output folder (model, checkpoint, history).")],
    config: Annotated[str, typer.Option(help="Model config: small or full.")] = "small",
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Random seed (split, initialisation, order).")] = 0,
    modality_dropout: Annotated[float, typer.Option(
        help="Per-case probability of hiding each optional input (thyroid mask, report, age, "
             "sex) during training.")] = 0.15,
    channels: Annotated[str | None, typer.Option(
        help="Comma-separated channels of the location feature map the model reads "
             "(default: the input design of llnm3d.models.train.TrainSettings).")] = None,
    nodule_dropout: Annotated[float | None, typer.Option(
        help="Per-case probability of hiding the nodule-mask channels during training "
             "(default: TrainSettings').")] = None,
    nodule_swap: Annotated[float | None, typer.Option(
        help="Per-case probability of showing another case's nodule mask during training "
             "(default: TrainSettings').")] = None,
    nodule_loss_weight: Annotated[float | None, typer.Option(
        help="Weight of the auxiliary loss that teaches the model where the nodule is, per "
             "patch (0: none; default: TrainSettings').")] = None,
    stem: Annotated[str | None, typer.Option(
        help="How image patches become tokens: linear (one map per 16x16 patch) or conv "
             "(small stride-2 convolutions; default: TrainSettings').")] = None,
    shuffle_labels: Annotated[bool, typer.Option(
        help="Train on labels permuted among the cases: the model of the label-randomisation "
             "check of `llnm3d heatmap-check`, never a model to use.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if "
                                                       "available).")] = None,
    allow_outside: AllowOutsideOption = False,
) -> None:
    """Train LLNM-Net on one view; resumes from the checkpoint in --out."""
    from .models.train import TrainSettings
    from .models.train import train as run

    with _input_errors():
        # Unset input-design options keep TrainSettings' defaults.
        names = (tuple(c.strip() for c in channels.split(",") if c.strip())
                 if channels is not None else None)
        given: dict[str, Any] = {"channels": names, "nodule_dropout": nodule_dropout,
                                 "nodule_swap": nodule_swap,
                                 "nodule_loss_weight": nodule_loss_weight, "stem": stem}
        design = {name: value for name, value in given.items() if value is not None}
        settings = TrainSettings(config=config, epochs=epochs, batch_size=batch_size,
                                 learning_rate=learning_rate, seed=seed,
                                 modality_dropout=modality_dropout,
                                 shuffle_labels=shuffle_labels, **design)
        result = run(_read_manifest(manifest, allow_outside), view, out, settings,
                     device=device)
    _say(f"best epoch {result.best_epoch}: val loss {result.val_loss:.4f}, "
         f"val AUC {result.val_auc:.3f}; model in {out}")
    _report_failures(result.failures, "case")


@app.command()
def heatmap(
    manifest: Annotated[Path, typer.Option(help="Manifest CSV.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    model_dir: Annotated[Path | None, typer.Option(
        help="Folder with transverse.* and longitudinal.* models (default: bundled).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per GradCAM++ pass.")] = 16,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if "
                                                       "available).")] = None,
    resize_masks: ResizeMasksOption = False,
    layer: Annotated[str, typer.Option(
        help="GradCAM++ layer: fused (first block over both streams), last, or "
             "bidirectional (image tokens entering the last bidirectional block).")
    ] = DEFAULT_LAYER,
    allow_outside: AllowOutsideOption = False,
) -> None:
    """LLNM probability and a GradCAM++ heatmap per image (resumable)."""
    from .models.heatmap import compute_heatmaps

    with _input_errors():
        result = compute_heatmaps(_read_manifest(manifest, allow_outside), out,
                                  model_dir=model_dir, batch_size=batch_size,
                                  device=device, resize_masks=resize_masks, layer=layer)
    _say(f"{len(result.predictions)} predictions and heatmaps in {out}")
    _notes(result.resumed.notes("case"))
    _report_failures(result.failures, "case")


@app.command("heatmap-check")
def heatmap_check(
    manifest: Annotated[Path, typer.Option(help="Manifest CSV.")],
    out: Annotated[Path, typer.Option(
        help="Output folder (checks.csv per image, summary.csv, summary.json).")],
    model_dir: Annotated[Path | None, typer.Option(
        help="Folder with transverse.* and longitudinal.* models (default: bundled).")] = None,
    random_labels_model_dir: Annotated[Path | None, typer.Option(
        help="Folder with models of the same design trained on permuted labels (`llnm3d "
             "train --shuffle-labels`): adds the label-randomisation check.")] = None,
    layer: Annotated[str, typer.Option(help="GradCAM++ layer: fused, last or bidirectional.")
                     ] = DEFAULT_LAYER,
    checks: Annotated[str | None, typer.Option(
        help="Comma-separated checks (default: all): nodule_mirrored, nodule_shifted, "
             "nodule_dilated, nodule_removed, thyroid_removed, random_head, random_blocks, "
             "random_bidirectional, random_all; random_labels with "
             "--random-labels-model-dir).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many images per view.")
                     ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weight randomisation.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per GradCAM++ pass.")] = 16,
    resize_masks: ResizeMasksOption = False,
    allow_outside: AllowOutsideOption = False,
) -> None:
    """Sanity checks of the heatmaps: model-weight randomisation and altered masks."""
    from .models.heatmap_checks import CHECKS, check_heatmaps

    with _input_errors():
        result = check_heatmaps(
            _read_manifest(manifest, allow_outside), out, model_dir=model_dir, layer=layer,
            checks=tuple(checks.split(",")) if checks else CHECKS, limit=limit, seed=seed,
            batch_size=batch_size, resize_masks=resize_masks,
            random_labels_model_dir=random_labels_model_dir)
    for row in result.summary.itertuples():
        _say(f"{row.view:12} {row.check:20} n={row.images:3} empty {row.empty_maps:3}  nodule mass "
             f"{row.nodule_mass:.2f} (kept {row.nodule_mass_kept:.2f})  thyroid mass "
             f"{row.thyroid_mass:.2f}  rank r {row.rank_correlation:.2f}")
    _say(f"tables in {out}")
    _report_failures(result.failures, "case")


@app.command()
def register(
    manifest: Annotated[Path, typer.Option(help="Manifest CSV.")],
    out: Annotated[Path, typer.Option(help="Output folder (patches/, qc.csv, register.json).")],
    heatmaps: Annotated[Path | None, typer.Option(
        help="Output folder of `llnm3d heatmap` for this manifest; without it, patches carry "
             "the fused nodule mask only.")] = None,
    atlas_path: AtlasOption = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes (default: all cores); with --scheduler local, Dask workers.")
    ] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address (tcp://host:8786; workers must see the same files), or "
             "'local' for a local Dask cluster. Results are identical to local processes.")
    ] = None,
    transform: Annotated[str, typer.Option(help="similarity or affine.")] = "similarity",
    min_weight: Annotated[float, typer.Option(
        help="Drop fused heatmap values below this (sparser patches).")] = 0.05,
    allow_coarse_location: Annotated[bool, typer.Option(
        help="Place nodules without masks by the manifest's lobe_third and front_back columns "
             "(empty ones read from the report; flagged as warnings) instead of failing them.")
    ] = False,
    allow_outside: AllowOutsideOption = False,
) -> None:
    """Register every nodule's views onto the atlas: one 3D patch per nodule and a QC table
    (resumable)."""
    from .registration import register as register_cohort

    with _input_errors():
        result = register_cohort(_read_manifest(manifest, allow_outside),
                                 heatmaps=heatmaps, atlas=_load_atlas(atlas_path),
                                 out_dir=out, transform=transform, min_weight=min_weight,
                                 allow_coarse_location=allow_coarse_location, workers=workers,
                                 scheduler=scheduler)
    counts = result.qc["status"].value_counts()
    _say(f"{len(result.qc)} nodules: {counts.get('ok', 0)} ok, "
         f"{counts.get('warning', 0)} with warnings, {counts.get('failed', 0)} failed; "
         f"QC table in {out / 'qc.csv'}")
    _notes(result.resumed.notes("nodule"))
    _report_failures(result.failures, "nodule")


@app.command()
def aggregate(
    registered: Annotated[list[Path], typer.Option(
        help="Output folder of `llnm3d register` (repeat to pool several).")],
    out: Annotated[Path, typer.Option(help="Output folder (maps, tables, summary.json).")],
    atlas_path: AtlasOption = None,
    estimator: Annotated[str, typer.Option(
        help="The risk map: spatial (smooth log-odds field fitted to the outcomes, footprints "
             "of unit mass, smoothness by LAML), kernel (kernel smoother at registered "
             "centres, bandwidth by leave-one-patient-out CV) or weighted (weighted "
             "proportion).")] = "spatial",
    weight: Annotated[str, typer.Option(
        help="A nodule's footprint: mask (fused nodule occupancy) or heatmap (fused "
             "GradCAM++; weighted maps then show where the model looks).")] = "mask",
    min_cases: Annotated[int, typer.Option(
        help="Mask voxels touched by fewer nodules (like LESYMAP's minimum subjects).")] = 10,
    permutations: Annotated[int, typer.Option(
        help="Max-statistic permutations for family-wise corrected p (0: none).")] = 1000,
    covariates: Annotated[str, typer.Option(
        help="Comma-separated covariates of the spatial model and the OLS test: age, sex, "
             "size, extent (log footprint voxels).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the permutations.")] = 0,
    update: Annotated[bool, typer.Option(
        help="Add nodules not yet in OUT's result to it.")] = False,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes for the accumulation (default: all cores).")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address, or 'local'; the result does not depend on it.")] = None,
    device: Annotated[str | None, typer.Option(
        help="torch device of the permutations (default: cuda if available).")] = None,
    tfce: Annotated[bool, typer.Option(
        help="Threshold-free cluster enhancement of the t-map, family-wise p by the same "
             "permutations.")] = True,
    cluster_p: Annotated[float, typer.Option(
        help="Cluster-forming threshold (two-sided p of t) of the cluster-mass test; 0 for "
             "none.")] = 0.001,
    connectivity: Annotated[int, typer.Option(
        help="Voxel neighbourhood of TFCE and clusters: 6 (faces) or 26.")] = 6,
    adjust_extent: Annotated[bool, typer.Option(
        help="Adjust the t-test for footprint extent (log voxels), the lesion-volume "
             "correction.")] = True,
    contrast: Annotated[str | None, typer.Option(
        help="Compare two groups: a qc.csv column with two levels (sex), source (the "
             "registration folder) or a column of --contrast-manifest. Adds contrast_* maps: "
             "each group's risk, the difference with intervals, the interaction test.")
    ] = None,
    contrast_manifest: Annotated[Path | None, typer.Option(
        help="Manifest (CSV) holding the --contrast column, joined on patient and nodule.")
    ] = None,
) -> None:
    """Voxelwise LLNM probability maps, tests and region/capsule-distance tables (resumable)."""
    from .statistics import aggregate as aggregate_stats

    names = [c.strip() for c in covariates.split(",") if c.strip()]
    with _input_errors():
        stats = aggregate_stats(registered, atlas=_load_atlas(atlas_path), out_dir=out,
                                estimator=estimator, weight=weight, min_cases=min_cases,
                                permutations=permutations, covariates=names, seed=seed,
                                update=update, workers=workers, scheduler=scheduler,
                                device=device, tfce=tfce, cluster_p=cluster_p or None,
                                connectivity=connectivity, adjust_extent=adjust_extent,
                                contrast=contrast, contrast_manifest=contrast_manifest)
    summary = stats.summary
    excluded = {k: v for k, v in summary["excluded"].items() if v}
    _say(f"{summary['nodules']} nodules ({summary['events']} with LLNM), "
         f"{summary['voxels']['tested']} voxels with >= {min_cases} nodules; "
         f"maps and tables in {out}")
    if excluded:
        _say(f"excluded: {excluded}")
    changed = stats.resumed.changed
    _notes(summary["notes"] + ([f"{out} held a result with {len(changed)} nodule(s) whose "
                                f"registration changed since (e.g. {changed[0]!r}); "
                                "accumulated everything again"] if changed else []))


LevelsOption = Annotated[str | None, typer.Option(
    help="Comma-separated isosurface probabilities, e.g. 0.4,0.5 (default: the 75th and 95th "
         "percentiles of the shown voxels).")]
PublishMinCasesOption = Annotated[int | None, typer.Option(
    "--min-cases", help="Publish only voxels and table rows with at least this many nodules "
                        "(default: the aggregation's --min-cases; never below it, nor below "
                        "5, the publishing floor).")]


def _levels(text: str | None) -> list[float] | None:
    from .io import InputError

    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--levels: expected numbers like 0.4,0.5, got {text!r}") from None


@app.command("export")
def export_command(
    stats: Annotated[Path, typer.Option(help="Output folder of `llnm3d aggregate`.")],
    out: Annotated[Path, typer.Option(help="Folder for field.glb, capsule.glb, "
                                           "isosurfaces.glb.")],
    atlas_path: AtlasOption = None,
    levels: LevelsOption = None,
    min_cases: PublishMinCasesOption = None,
    field_spacing_mm: Annotated[float, typer.Option(
        help="Grid of the exported probability points (mm).")] = 1.0,
    units: Annotated[str, typer.Option(
        help="Length unit of the files: mm (atlas mm, as the site's) or m (metres, the glTF "
             "standard's unit, for Blender and other tools).")] = "mm",
) -> None:
    """glTF (.glb) files of the probability field, capsule surface and isosurfaces."""
    from .export import export_stats

    with _input_errors():
        atlas = _load_atlas(atlas_path) if atlas_path else None
        result = export_stats(stats, out, atlas=atlas, levels=_levels(levels),
                              min_cases=min_cases, field_spacing_mm=field_spacing_mm,
                              units=units)
    _say(f"{result.points} voxels with >= {result.min_cases} nodules, isosurfaces "
         f"at {result.isosurface_levels}; glTF files in {out}")
    _notes(result.notes)


@app.command("build-site")
def build_site_command(
    out: Annotated[Path, typer.Option(help="Site folder (replaced as a whole).")] = Path("site"),
    stats: Annotated[Path | None, typer.Option(
        help="Output folder of `llnm3d aggregate`.")] = None,
    points: Annotated[Path | None, typer.Option(
        help="A point CSV (x,y,z,r,g,b), e.g. the published LLNM-Net points, shown as a "
             "layer beside the atlas (or alone).")] = None,
    atlas_path: AtlasOption = None,
    title: Annotated[str, typer.Option(help="Page title (plain text).")] = "",
    description: Annotated[str | None, typer.Option(
        help="Text under the title (plain text; default: the cohort in one sentence).")] = None,
    levels: LevelsOption = None,
    min_cases: PublishMinCasesOption = None,
) -> None:
    """A static, offline 3D viewer site (index.html, glTF assets, vendored three.js) for
    GitHub Pages or any static host."""
    from .site import DEFAULT_TITLE, build_site, site_size_bytes

    with _input_errors():
        atlas = _load_atlas(atlas_path) if atlas_path else None
        site = build_site(out, stats, points_csv=points, atlas=atlas,
                          title=title or DEFAULT_TITLE, description=description,
                          levels=_levels(levels), min_cases=min_cases)
    _say(f"site in {site} ({site_size_bytes(site) / 1e6:.2f} MB without the vendored "
         f"three.js); view it with `llnm3d serve {site}`")


@app.command()
def serve(
    site: Annotated[Path, typer.Argument(help="A folder written by `llnm3d build-site`.")] = Path(
        "site"),
    port: Annotated[int, typer.Option(help="Port on localhost (0: any free port).")] = 8000,
) -> None:
    """Serve a site's files on http://localhost:PORT (ES modules do not load from file://);
    no folder listings, nothing outside the site folder."""
    import threading

    from .site import serving

    if not (site / "index.html").is_file():
        _fail(f"{site}: no index.html; build it with `llnm3d build-site`")
    if not 0 <= port <= 65535:
        _fail(f"--port {port}: a port is 0-65535")
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(serving(site, port, verbose=True))
        except OSError as exc:
            _fail(f"cannot serve on port {port}: {exc.strerror or exc}")
        _say(f"serving {site} on {url} (Ctrl+C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo-output"),
    patients: Annotated[int, typer.Option(help="Phantom patients.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Run the whole chain on bundled defaults: atlas, phantom cohort, heatmaps (bundled
    LLNM-Net), registration, aggregation and the 3D viewer site."""
    from .demo import STAGES, run_demo

    def stage(index: int, name: str) -> None:
        typer.secho(f"[{index + 1}/{len(STAGES)}] {name}", bold=True, err=True)

    with _input_errors():
        summary = run_demo(out, n_patients=patients, seed=seed, stage=stage)
    error = summary["registration_centre_error_mm"]
    truth = summary["map_vs_truth"]
    truth_text = (f"Pearson {truth['pearson']}, Spearman {truth['spearman']}, 95 % intervals "
                  f"cover it in {truth['coverage_95']:.0%} of {truth['voxels']} voxels"
                  if truth["voxels"] else "no voxel has enough nodules to show")
    regions = ", ".join(f"{r['region']} {r['risk']:.0%} (n={r['nodules']})"
                        for r in summary["top_regions"])
    typer.echo(f"""
{summary['patients']} patients, {summary['nodules']} nodules, LLNM prevalence \
{summary['llnm_prevalence']:.0%}
model AUC per nodule:          {summary['model_auc_per_nodule']}
registration centre error:     median {error['median']} mm, 95th percentile {error['p95']} mm
risk map vs end-to-end truth:  {truth_text}
highest-risk regions:          {regions}
site:                          {_printable(summary['site'])} \
({summary['site_mb_without_three_js']} MB without three.js)
view it:                       llnm3d serve {_printable(summary['site'])}   (then open \
http://localhost:8000)
everything:                    {_printable(Path(out) / 'summary.json')}""")


@app.command("import-dicom")
def import_dicom_command(
    source: Annotated[Path, typer.Argument(help="Folder of ultrasound DICOM files (searched "
                                                "recursively).")],
    out: Annotated[Path, typer.Option(help="Cohort folder (manifest.csv, images/); a re-run "
                                           "imports only new or changed files.")],
    key: Annotated[Path | None, typer.Option(
        help="Private key file mapping opaque ids back to patients, outside --out (default: "
             "OUT.dicom-key.json beside it). Keep it; later imports into OUT need it.")] = None,
    frame: Annotated[int | None, typer.Option(
        help="Frame of multi-frame files, 0-based (default: the middle frame).")] = None,
    annotations: Annotated[Path | None, typer.Option(
        help="CSV with a 'file' column (path relative to SOURCE) and manifest columns to "
             "fill in (nodule_id, view, side, label, ...).")] = None,
) -> None:
    """Import ultrasound DICOM files as a de-identified cohort: each file's B-mode region as a
    grayscale PNG, calibrated by its ultrasound regions, and a manifest (docs/dicom.md)."""
    from .dicom import import_dicom

    with _input_errors():
        result = import_dicom(source, out, key_path=key, frame=frame, annotations=annotations)
    _say(f"{len(result.manifest)} images in {out / 'manifest.csv'} ({result.imported} imported "
         f"now, {result.reused} imported before, {len(result.failures)} failed)")
    _notes(result.notes)
    _report_failures(result.failures, "file")


def main() -> None:
    """Console entry point: usage errors (an unknown option, a value of the wrong type) are one
    ``error:`` line too, with exit code 2."""
    # Typer raises click's UsageError, or that of the click it vendors (typer >= 0.26).
    # __mro__ is typed as plain classes; this one is the UsageError typer.BadParameter derives from.
    usage_error = cast("type[UsageError]", next(c for c in typer.BadParameter.__mro__
                                                if c.__name__ == "UsageError"))
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # the help was shown instead
            command = exc.ctx.command_path if exc.ctx is not None else "llnm3d"
            _say(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
        code = EXIT_INPUT_ERROR
    except typer.Abort:
        code = 130  # interrupted: the shell's code for SIGINT
    sys.exit(code or 0)
