"""Viewer at scale: frames/s of the 3D field and of the slice panels against the number of
points, up to the full 0.5 mm field.

Usage::

    python benchmarks/bench_field.py [--spacings 2 1.5 1 0.75 0.5] [--seconds 3] [--out DIR]

A cohort large enough to cover the whole gland is what the 0.5 mm field is for, so the maps are
synthetic: every atlas gland voxel covered by 40 nodules, a smooth risk field (a left-right and
cranio-caudal gradient) with +-0.1 intervals and a smooth t map. For each field spacing the
site is built by ``build_site`` and opened in Debian's Chromium (``/usr/bin/chromium``, WebGL on
SwiftShader, i.e. on the CPU; 1280x800 window, as ``bench_viewer.py``), then:

- 3D frames/s, rendering-bound: the camera orbits 0.01 rad a frame, the page's ``render()`` is
  called back to back and each frame is forced to finish (``readPixels`` of one pixel);
- the same with the field alone (capsule and landmarks hidden);
- slice frames/s while dragging the crosshair: the cursor steps one voxel along the transverse
  panel's x axis per frame (``setCursor``: the three panels redrawn) and the 3D view, whose
  marker follows the cursor, is rendered and finished too; and the slices alone.

At the finest spacing the field alone is also drawn the other ways considered, to show why
the viewer draws what it does: every shown voxel instead of the visible shell (the index the
viewer keeps is dropped after load), and with antialiasing (the WebGL context asked for it,
through an init script); the viewer before this representation drew every voxel, antialiased.

Prints a Markdown table and writes it with the raw figures (``field.md``, ``field.json``) to
``--out``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from browser_frames import CHROMIUM_ARGS, FRAME_HELPERS_JS
from playwright.sync_api import sync_playwright

from llnm3d import Atlas
from llnm3d.site import build_site, serving
from llnm3d.statistics import Stats

ROOT = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1280, "height": 800}
NODULES = 40

MEASURE_JS = """async ({seconds, fieldOnly}) => {
  const api = window.llnm3d;
  await api.ready;
""" + FRAME_HELPERS_JS + """  const hidden = [];
  if (fieldOnly) {
    for (const [id, root] of Object.entries(api.layers)) {
      if (id !== 'field' && root.visible) { root.visible = false; hidden.push(root); }
    }
  }
  const timeLoop = (step) => {
    let frames = 0;
    const start = performance.now();
    while (performance.now() - start < 1000 * seconds || frames < 10) { step(frames); frames += 1; }
    return frames / ((performance.now() - start) / 1000);
  };
  api.render(); finish();
  const out = {drawn: api.renderer.info.render.points, shown: api.shownCount(),
               canvas: [gl.drawingBufferWidth, gl.drawingBufferHeight]};
  out.fps = timeLoop(() => { orbit(0.01); api.render(); finish(); });
  hidden.forEach((root) => { root.visible = true; });
  if (!fieldOnly) {
    const start = [...api.state.cursor];
    const spacing = api.fieldSpacing();
    const at = (i) => [start[0] + spacing * ((i % 20) - 10), start[1], start[2]];
    // Reading a pixel back from each panel makes the browser finish drawing it.
    const panels = [...document.querySelectorAll('#slices canvas')].map((c) => c.getContext('2d'));
    const finishSlices = () => panels.forEach((ctx) => ctx.getImageData(0, 0, 1, 1));
    out.sliceDragFps = timeLoop((i) => {
      api.setCursor(at(i)); finishSlices(); api.render(); finish();
    });
    out.sliceOnlyFps = timeLoop((i) => { api.setCursor(at(i)); finishSlices(); });
  }
  return out;
}"""


def synthetic_stats(atlas: Atlas) -> Stats:
    """Every gland voxel covered by NODULES nodules; smooth risk, interval and t maps."""
    z, y, x = np.indices(atlas.labels.shape, dtype=np.float32)
    xyz = [atlas.origin_mm[d] + atlas.spacing_mm * v for d, v in enumerate((x, y, z))]
    gland = atlas.labels > 0
    risk = 1 / (1 + np.exp(-(0.05 * xyz[0] + 0.06 * xyz[2] - 0.2)))
    nan = np.float32(np.nan)
    volumes = {
        "n_nodules": np.where(gland, NODULES, 0).astype(np.float32),
        "probability": np.where(gland, risk, nan).astype(np.float32),
        "probability_ci_low": np.where(gland, np.clip(risk - 0.1, 0, 1), nan).astype(np.float32),
        "probability_ci_high": np.where(gland, np.clip(risk + 0.1, 0, 1), nan).astype(np.float32),
        "t": np.where(gland, 3 * np.sin(xyz[0] / 9) * np.cos(xyz[2] / 11), nan).astype(np.float32),
    }
    regions = pd.DataFrame({"region": ["whole gland"], "half": ["whole"], "nodules": [NODULES],
                            "events": [NODULES // 2], "risk": [0.5], "ci_low": [0.35],
                            "ci_high": [0.65], "mean_model_probability": [0.5]})
    distance = pd.DataFrame({"bin": ["0-1 mm"], "nodules": [NODULES], "events": [NODULES // 2],
                             "risk": [0.5], "ci_low": [0.35], "ci_high": [0.65],
                             "mean_model_probability": [0.5]})
    summary = {"nodules": NODULES, "events": NODULES // 2, "prevalence": 0.5,
               "parameters": {"min_cases": 10, "weight": "mask"}, "maps": list(volumes)}
    return Stats(volumes, atlas.origin_mm, atlas.spacing_mm, regions, distance, summary)


# The other representations: WebGL contexts created with antialiasing, and every shown voxel
# drawn (the shell index removed; the shader still hides what the controls hide).
ANTIALIAS_JS = """(() => {
  const original = HTMLCanvasElement.prototype.getContext;
  HTMLCanvasElement.prototype.getContext = function (kind, options) {
    return original.call(this, kind, kind.startsWith('webgl') ? {...options, antialias: true}
      : options);
  };
})();"""
ALL_POINTS_JS = """() => {
  const geometry = window.llnm3d.fieldPoints.geometry;
  geometry.setIndex(null);
  geometry.setDrawRange(0, Infinity);
}"""
REPRESENTATIONS = {  # name: (antialias, every voxel)
    "visible shell, no antialiasing (shipped)": (False, False),
    "every voxel, no antialiasing": (False, True),
    "visible shell, antialiased": (True, False),
    "every voxel, antialiased (the viewer before)": (True, True),
}


def measure(browser, url: str, seconds: float, field_only: bool, antialias: bool = False,
            every_voxel: bool = False) -> dict:
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    if antialias:
        page.add_init_script(ANTIALIAS_JS)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    started = time.perf_counter()
    page.goto(url, wait_until="load", timeout=300_000)
    page.evaluate("window.llnm3d.ready")
    if every_voxel:
        page.evaluate(ALL_POINTS_JS)
    load_s = time.perf_counter() - started
    result = page.evaluate(MEASURE_JS, {"seconds": seconds, "fieldOnly": field_only})
    result["load_s"] = load_s
    result["errors"] = errors + page.evaluate("window.llnm3d.errors")
    context.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Field spacings are whole multiples of the 0.5 mm atlas voxel (0.75 mm rounds to 1 mm).
    parser.add_argument("--spacings", type=float, nargs="+", default=[2.0, 1.5, 1.0, 0.5])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench_field")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "field")
    args = parser.parse_args()
    atlas = Atlas.default()
    stats_dir = synthetic_stats(atlas).save(args.work / "stats")
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for spacing in args.spacings:
            site = build_site(args.work / f"site-{spacing:g}", stats_dir, atlas=atlas,
                              field_spacing_mm=spacing, min_cases=10)
            size = sum(f.stat().st_size for f in (site / "assets").iterdir())
            with serving(site) as url:
                full = measure(browser, url + "index.html", args.seconds, field_only=False)
                alone = measure(browser, url + "index.html", args.seconds, field_only=True)
                variants = {}
                if spacing == min(args.spacings):
                    for name, (antialias, every) in REPRESENTATIONS.items():
                        variants[name] = measure(browser, url + "index.html", args.seconds,
                                                 True, antialias, every)
            rows.append({"spacing_mm": spacing, "assets_bytes": size, "site": full,
                         "field_only": alone, "representations": variants})
            print(f"{spacing:g} mm: {full['shown']:,} points, {full['fps']:.1f} frames/s "
                  f"({alone['fps']:.1f} field alone), slices dragged {full['sliceDragFps']:.1f}",
                  file=sys.stderr)
        version = browser.version
        browser.close()
    lines = [f"command: `python {' '.join(sys.argv)}`", "",
             f"Chromium {version}, SwiftShader (software WebGL), viewport "
             f"{VIEWPORT['width']}x{VIEWPORT['height']}, 3D canvas "
             f"{rows[0]['site']['canvas'][0]}x{rows[0]['site']['canvas'][1]}; synthetic field "
             f"covering every gland voxel; {args.seconds:g} s per figure, each frame forced to "
             "finish.", "",
             "| field spacing | points | points drawn (visible shell) | assets "
             "| 3D frames/s, site (capsule, landmarks) "
             "| 3D frames/s, field alone | frames/s dragging the slice crosshair (slices + 3D) "
             "| slice redraws/s alone |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        full, alone = row["site"], row["field_only"]
        lines.append(f"| {row['spacing_mm']:g} mm | {full['shown']:,} | {full['drawn']:,} | "
                     f"{row['assets_bytes'] / 1e6:.2f} MB | {full['fps']:.1f} | "
                     f"{alone['fps']:.1f} | {full['sliceDragFps']:.1f} | "
                     f"{full['sliceOnlyFps']:.1f} |")
    finest = next(row for row in rows if row["representations"])
    lines += ["", f"Representations of the {finest['spacing_mm']:g} mm field alone "
              f"({finest['site']['shown']:,} voxels):", "",
              "| representation | points drawn | 3D frames/s | ratio to the viewer before |",
              "|---|---|---|---|"]
    before = finest["representations"]["every voxel, antialiased (the viewer before)"]["fps"]
    for name, run in finest["representations"].items():
        lines.append(f"| {name} | {run['drawn']:,} | {run['fps']:.1f} | "
                     f"{run['fps'] / before:.1f}x |")
    errors = sorted({e for row in rows for run in (row["site"], row["field_only"],
                                                   *row["representations"].values())
                     for e in run["errors"]})
    if errors:
        lines += ["", f"page errors: {json.dumps(errors)}"]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "field.md").write_text(text)
    (args.out / "field.json").write_text(json.dumps({"command": sys.argv, "chromium": version,
                                                     "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
