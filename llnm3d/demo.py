"""The whole chain on bundled defaults (``llnm3d demo``)."""

from __future__ import annotations

from pathlib import Path

from .atlas import Atlas
from .io import ensure_writable_dir, write_json
from .manifest import read_manifest
from .phantom import make_phantom
from .qc import contact_sheet


def run_demo(out_dir: str | Path, n_patients: int = 200, seed: int = 0,
             progress: bool = True) -> dict:
    """Build the atlas and a phantom cohort under ``out_dir``; return (and save) a summary.

    Writes ``atlas/``, ``phantom/`` (with ``contact_sheet.png``) and ``summary.json``.
    Idempotent: a second run with the same arguments reuses what is complete.
    """
    out_dir = ensure_writable_dir(out_dir)
    atlas = Atlas.default()
    atlas.save(out_dir / "atlas")
    cohort = make_phantom(out_dir / "phantom", n_patients, seed=seed, atlas=atlas,
                          progress=progress)
    sheet = contact_sheet(read_manifest(cohort.out_dir / "manifest.csv"),
                          cohort.out_dir / "contact_sheet.png")
    summary = {
        "atlas": str(out_dir / "atlas"),
        "gland_volume_ml": round(atlas.surface.volume / 1000, 2),
        "cohort": str(cohort.out_dir),
        "patients": n_patients,
        "nodules": len(cohort.truth),
        "images": len(cohort.manifest),
        "llnm_prevalence": round(float(cohort.truth["label"].mean()), 3),
        "failed_patients": len(cohort.failed),
        "contact_sheet": str(sheet),
        "seed": seed,
    }
    write_json(out_dir / "summary.json", summary)
    return summary
