"""Viewer vs the published LLNM-Net page: frames/s, first frame and bytes, in one run.

Usage::

    curl -o build/published/index.html \\
        https://raw.githubusercontent.com/Snowinbio/LLNM-Net/c5821ca/index.html
    python benchmarks/bench_viewer.py [--published-html build/published/index.html]
        [--work DIR] [--out DIR] [--seconds 3] [--loads 3]

The baseline is the published page itself (``index.html`` of the LLNM-Net repository: 4,580
spheres, one mesh each, three.js r128), changed in one way only: its two ``<script src>`` URLs
point at local copies of three.js r128 (``three.min.js`` and ``examples/js/controls/
OrbitControls.js`` from the npm package pinned as ``three-r128`` in package.json) instead of
the CDNs, since this machine has no internet. The page is not shipped here (it is the study's
code); download it as above.

Pages, each served by a local ``http.server`` and opened in Debian's Chromium
(``/usr/bin/chromium``, WebGL on SwiftShader, i.e. on the CPU):

- ``published``: the published page, 1280x800 window (its canvas fills it: 1280x800);
- ``llnm3d``: ``build_site(points_csv=...)`` showing the same points alone (the atlas capsule
  it also draws is hidden through the URL hash), window 1680x800 so that its 3D canvas (beside
  the 400 px side panel) is 1280x800 too;
- ``llnm3d demo``: the demo site as published (``site/``: field, capsule, landmarks, slices),
  1280x800 window.

Measured on each of ``--loads`` fresh page loads (median shown; the order rotates between
loads, with a pause of ``PAUSE_S`` after each):

- frames per second, rendering-bound: the camera orbits 0.01 rad a frame around the page's
  controls target and the scene is rendered back to back (the llnm3d page's ``render()``; the
  published page's own ``renderer.render(scene, camera)``, its globals), each frame forced to
  finish (``readPixels`` of one pixel, ``gl.finish``), for ``--seconds`` and >= 20 frames;
- frames per second under ``requestAnimationFrame`` while orbiting: llnm3d renders in the
  callback; the published page renders in its own animation loop, so only the camera is
  moved and the callbacks counted;
- draw calls, triangles and points of one frame (``renderer.info.render``);
- time to first frame drawn: the first animation frame at which the page has rendered once,
  after forcing the GPU to finish (ms from navigation start);
- bytes transferred (response bodies) and the same gzipped (level 6, file by file, as GitHub
  Pages and the CDNs serve them).

Prints a Markdown table and writes it with the raw figures (``viewer.md``, ``viewer.json``) to
``--out``.
"""

import argparse
import gzip
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from browser_frames import CHROMIUM_ARGS, FRAME_HELPERS_JS
from playwright.sync_api import sync_playwright

from llnm3d.site import build_site, serving

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "examples" / "llnm-net-published-3d" / "points.csv"
THREE_R128 = ROOT / "node_modules" / "three-r128"
CDN = {  # the published page's script URLs -> local copies
    "https://cdnjs.cloudflare.com/ajax/libs/three.js/r128/three.min.js": "build/three.min.js",
    "https://cdn.jsdelivr.net/npm/three@0.128.0/examples/js/controls/OrbitControls.js":
        "examples/js/controls/OrbitControls.js",
}
WINDOW = {"width": 1280, "height": 800}
WIDE_WINDOW = {"width": 1680, "height": 800}  # the llnm3d canvas is then 1280x800
MIN_FRAMES, MIN_RAF_FRAMES = 20, 5
# Between page loads: the GPU process (SwiftShader, on the same 2 cores) may still be drawing
# the frames a slow page queued, which would slow the next page's start.
PAUSE_S = 3.0

# The published page keeps its three.js objects in globals; this reads them, changing nothing.
PUBLISHED_HOOK = """() => {
  window.bench = {
    ready: Promise.resolve(), renderer, camera, controls,
    render: () => renderer.render(scene, camera), selfRendering: true,
  };
}"""

MEASURE_JS = """async ({hook, seconds, minFrames, minRafFrames}) => {
  const api = window[hook];
  await api.ready;
""" + FRAME_HELPERS_JS + """  const debug = gl.getExtension('WEBGL_debug_renderer_info');
  const out = {
    firstFrameDoneMs: window.__firstFrameDoneMs,
    glRenderer: gl.getParameter(debug ? debug.UNMASKED_RENDERER_WEBGL : gl.RENDERER),
    canvas: [gl.drawingBufferWidth, gl.drawingBufferHeight],
    antialias: gl.getContextAttributes().antialias,
  };
  api.render(); finish();
  const info = api.renderer.info.render;
  Object.assign(out, {calls: info.calls, triangles: info.triangles, points: info.points});
  let frames = 0;
  const start = performance.now();
  while (performance.now() - start < 1000 * seconds || frames < minFrames) {
    orbit(0.01); api.render(); finish(); frames += 1;
  }
  out.fps = frames / ((performance.now() - start) / 1000);
  out.rafFps = await new Promise((resolve) => {
    let n = 0;
    const t0 = performance.now();
    const step = () => {
      orbit(0.01);
      if (!api.selfRendering) api.render();
      n += 1;
      if (performance.now() - t0 < 1000 * seconds || n < minRafFrames) {
        requestAnimationFrame(step);
      } else {
        finish();  // frames still queued in the GPU process count
        resolve(n / ((performance.now() - t0) / 1000));
      }
    };
    requestAnimationFrame(step);
  });
  return out;
}"""

# Added before the page's scripts: at the first animation frame after the page rendered once
# (three.js counts frames in renderer.info), wait for the GPU to finish and note the time.
FIRST_FRAME_DONE_JS = """(() => {
  const poll = () => {
    const renderer = window.llnm3d?.renderer ?? window.renderer;
    if (renderer?.info?.render?.frame > 0) {
      const gl = renderer.getContext();
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
      gl.finish();
      window.__firstFrameDoneMs = performance.now();
    } else requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
})();"""


def published_folder(page: Path, folder: Path) -> Path:
    """The published page with its CDN scripts pointed at local three.js r128, and those files."""
    if not page.is_file():
        sys.exit(f"{page}: not found; download the published page first:\n  curl -o {page} "
                 "https://raw.githubusercontent.com/Snowinbio/LLNM-Net/c5821ca/index.html")
    if not (THREE_R128 / "build" / "three.min.js").is_file():
        sys.exit(f"{THREE_R128}: missing; run `npm ci` (package.json pins three-r128)")
    html = page.read_bytes()
    for url, local in CDN.items():
        if url.encode() not in html:
            sys.exit(f"{page}: does not load {url}; is it the published LLNM-Net page?")
        html = html.replace(url.encode(), local.encode())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "index.html").write_bytes(html)
    for local in CDN.values():
        (folder / local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(THREE_R128 / local, folder / local)
    return folder


def measure(browser, url: str, hook: str, window: dict, seconds: float,
            shot: Path | None = None) -> dict:
    """One fresh page load (new context, empty cache): the figures of MEASURE_JS plus bytes."""
    started = time.perf_counter()
    context = browser.new_context(viewport=window, device_scale_factor=1)
    page = context.new_page()
    page.add_init_script(FIRST_FRAME_DONE_JS)
    responses = []
    page.on("response", lambda response: responses.append(response))
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url, wait_until="load", timeout=300_000)
    if hook == "bench":
        page.evaluate(PUBLISHED_HOOK)
    page.evaluate(f"window.{hook}.ready")
    page.wait_for_function("window.__firstFrameDoneMs !== undefined", timeout=300_000)
    if shot is not None:  # before the frame-rate loops, which may leave the GPU process busy
        page.screenshot(path=str(shot), timeout=300_000)
    result = page.evaluate(MEASURE_JS, {"hook": hook, "seconds": seconds,
                                        "minFrames": MIN_FRAMES, "minRafFrames": MIN_RAF_FRAMES})
    bodies = {r.url: r.body() for r in responses if r.url.startswith("http") and r.ok}
    result["bytes"] = sum(len(b) for b in bodies.values())
    result["bytes_gzip"] = sum(len(gzip.compress(b, 6)) for b in bodies.values())
    result["files"] = {url: len(body) for url, body in bodies.items()}
    if hook == "llnm3d":
        errors += page.evaluate("window.llnm3d.errors")
    result["errors"] = errors
    context.close()
    result["wall_s"] = time.perf_counter() - started
    return result


def fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


ROWS = [  # metric, key, format
    ("frames/s, rendering-bound (forced finish)", "fps", "{:.1f}"),
    ("frames/s, requestAnimationFrame", "rafFps", "{:.1f}"),
    ("draw calls per frame", "calls", "{:,.0f}"),
    ("triangles per frame", "triangles", "{:,.0f}"),
    ("points per frame", "points", "{:,.0f}"),
    ("time to first frame drawn (ms from navigation start)", "firstFrameDoneMs", "{:,.0f}"),
    ("bytes transferred", "bytes", fmt_bytes),
    ("bytes transferred, gzipped as served", "bytes_gzip", fmt_bytes),
]


def median(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for _, key, _ in ROWS}


def table(medians: dict, canvases: dict) -> str:
    names = list(medians)
    lines = ["| metric | " + " | ".join(names) + " | ratio llnm3d / published |",
             "|---" * (len(names) + 2) + "|",
             "| 3D canvas (px) | " + " | ".join("x".join(map(str, canvases[n])) for n in names)
             + " | |"]
    for label, key, form in ROWS:
        show = form.format if isinstance(form, str) else form
        base, ours = medians["published"][key], medians["llnm3d"][key]
        ratio = f"{ours / base:.2f}" if base else "-"
        lines.append(f"| {label} | " + " | ".join(show(medians[n][key]) for n in names)
                     + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published-html", type=Path,
                        default=ROOT / "build" / "published" / "index.html")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench_viewer")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "viewer")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--loads", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    published = published_folder(args.published_html, args.work / "published")
    ours = build_site(args.work / "llnm3d", points_csv=CSV)
    runs: dict[str, list[dict]] = {"published": [], "llnm3d": [], "llnm3d demo": []}
    with serving(published) as published_url, serving(ours) as ours_url, \
            serving(ROOT / "site") as demo_url, sync_playwright() as p:
        pages = {"published": (published_url + "index.html", "bench", WINDOW),
                 "llnm3d": (ours_url + "index.html#layers=published_points", "llnm3d",
                            WIDE_WINDOW),
                 "llnm3d demo": (demo_url + "index.html", "llnm3d", WINDOW)}
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for load in range(args.loads):
            order = list(pages)[load % 3:] + list(pages)[:load % 3]  # rotated
            for name in order:
                address, hook, window = pages[name]
                shot = args.work / f"{name.replace(' ', '_')}.png" if load == 0 else None
                runs[name].append(measure(browser, address, hook, window, args.seconds, shot))
                time.sleep(PAUSE_S)
                print(f"load {load + 1}/{args.loads} {name}: {runs[name][-1]['fps']:.1f} "
                      "frames/s", file=sys.stderr)
        version = browser.version
        browser.close()
    medians = {name: median(r) for name, r in runs.items()}
    canvases = {name: r[0]["canvas"] for name, r in runs.items()}
    first = runs["llnm3d"][0]
    text = (f"command: `python {' '.join(sys.argv)}`\n\n"
            f"Chromium {version}, WebGL renderer: {first['glRenderer']}; antialias: "
            + ", ".join(f"{n} {'on' if r[0]['antialias'] else 'off'}" for n, r in runs.items())
            + f"; median of {args.loads} page loads. Rendering-bound: {args.seconds:g} s and at "
            f"least {MIN_FRAMES} frames, each forced to finish; requestAnimationFrame: "
            f"{args.seconds:g} s and at least {MIN_RAF_FRAMES} frames.\n\n"
            + table(medians, canvases) + "\n")
    errors = {name: sorted({e for run in r for e in run["errors"]}) for name, r in runs.items()}
    if any(errors.values()):
        text += f"\npage errors: {json.dumps(errors)}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "viewer.md").write_text(text)
    (args.out / "viewer.json").write_text(json.dumps(
        {"command": sys.argv, "chromium": version, "medians": medians, "runs": runs}, indent=1))
    print(text)
    print(f"written: {args.out / 'viewer.md'}, {args.out / 'viewer.json'} "
          f"(screenshots in {args.work})")


if __name__ == "__main__":
    main()
