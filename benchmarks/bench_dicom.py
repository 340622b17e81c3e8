"""DICOM import speed: first import, a re-run that finds everything imported, peak memory.

Usage::

    python benchmarks/bench_dicom.py --work DIR [--stills 300] [--cines 10] [--frames 40]

Writes ``--stills`` single-frame files as most scanners store ultrasound (800x600 pixels,
JPEG baseline, YBR_FULL_422, a 640x480 B-mode region of 0.08 mm pixels, a burned-in banner
around it) for 60 patients, and ``--cines`` uncompressed MONOCHROME2 cine loops of
``--frames`` frames, into ``DIR/dicom``; then imports them into ``DIR/cohort`` twice and prints
a Markdown table (seconds, files/s, peak RSS, and the RSS of the process once llnm3d is
imported, before the import starts). Each import runs in its own process.
"""

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

ROWS, COLS = 600, 800
REGION = (80, 60, 719, 539)  # MinX0, MinY0, MaxX1, MaxY1
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
# One import, timed in a fresh process: prints seconds, counts and the peak RSS as JSON.
CHILD = """
import json, resource, sys, time
from llnm3d.dicom import import_dicom
loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
result = import_dicom(sys.argv[1], sys.argv[2], progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "imported": result.imported,
                  "reused": result.reused, "failed": len(result.failures),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loaded_mb": loaded_mb}))
"""


def screen(rng: np.random.Generator) -> np.ndarray:
    """A (ROWS, COLS) uint8 scanner screen: speckle in the B-mode region, a text banner."""
    image = np.zeros((ROWS, COLS), np.uint8)
    x0, y0, x1, y1 = REGION
    speckle = rng.rayleigh(40.0, (y1 - y0 + 1, x1 - x0 + 1))
    image[y0:y1 + 1, x0:x1 + 1] = np.clip(speckle, 0, 255).astype(np.uint8)
    image[10:40, 100:700] = 255
    return image


def dataset(patient: int, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.PatientID, ds.PatientName = f"PAT{patient:05d}", f"Patient^{patient}"
    ds.StudyInstanceUID = generate_uid()
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = 1, 1, 0
    (item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1,
     item.RegionLocationMaxY1) = REGION
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX = item.PhysicalDeltaY = 0.008
    ds.SequenceOfUltrasoundRegions = Sequence([item])
    return ds


def write_cohort(folder: Path, stills: int, cines: int, frames: int) -> None:
    rng = np.random.default_rng(0)
    gray = screen(rng)
    encoded = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(encoded, format="JPEG", quality=90,
                                                         subsampling=1)
    for index in range(stills):
        ds = dataset(index % 60, US_IMAGE_STORAGE)
        ds.set_pixel_data(np.stack([gray] * 3, axis=-1), "RGB", 8)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([encoded.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"still_{index:05d}.dcm", enforce_file_format=True)
    for index in range(cines):
        ds = dataset(index % 60, US_MULTIFRAME_STORAGE)
        ds.set_pixel_data(np.stack([screen(rng) for _ in range(frames)]), "MONOCHROME2", 8)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"cine_{index:03d}.dcm", enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--stills", type=int, default=300)
    parser.add_argument("--cines", type=int, default=10)
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    source, cohort = args.work / "dicom", args.work / "cohort"
    for folder in (source, cohort):
        shutil.rmtree(folder, ignore_errors=True)
    key = args.work / "cohort.dicom-key.json"
    key.unlink(missing_ok=True)
    source.mkdir(parents=True)
    write_cohort(source, args.stills, args.cines, args.frames)
    files = args.stills + args.cines
    megabytes = sum(p.stat().st_size for p in source.iterdir()) / 1e6

    print(f"{args.stills} JPEG stills, {args.cines} cine loops of {args.frames} frames "
          f"({megabytes:.0f} MB)\n")
    print("| run | seconds | files/s | imported | reused | peak RSS (MB) | RSS of `import "
          "llnm3d` (MB) |")
    print("|---|---|---|---|---|---|---|")
    for run in ("first import", "re-run (all imported)"):
        output = subprocess.run([sys.executable, "-c", CHILD, str(source), str(cohort)],
                                check=True, capture_output=True, text=True).stdout
        result = json.loads(output.splitlines()[-1])
        assert result["failed"] == 0, result
        print(f"| {run} | {result['seconds']:.1f} | {files / result['seconds']:.0f} | "
              f"{result['imported']} | {result['reused']} | {result['peak_mb']:.0f} | "
              f"{result['loaded_mb']:.0f} |")


if __name__ == "__main__":
    main()
