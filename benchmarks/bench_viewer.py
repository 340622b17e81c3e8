"""Viewer: the published LLNM-Net point set as one THREE.Points vs one sphere mesh per point.

Usage::

    python benchmarks/bench_viewer.py [--work DIR] [--out DIR] [--seconds 3] [--loads 3]

Draws the published 3D point set (4,580 points, ``examples/llnm-net-published-3d``) in one
run, on one machine, in Debian's Chromium (``/usr/bin/chromium``, driven by playwright, WebGL
on SwiftShader, i.e. software rendering on the CPU), two ways, in the same 1280x800 window:

- llnm3d: the site of ``build_site(points_csv=...)``: the points are one ``THREE.Points`` (one
  draw call). The atlas capsule the site also shows is hidden through the URL hash
  (``#layers=published_points``); the site as shipped, capsule shown, is measured too.
- one mesh per point, as the published page did: an ``index.html`` written here with the points
  inline as a JS array and one ``Mesh(SphereGeometry(r, 16, 16), MeshBasicMaterial)`` each
  (4,580 draw calls, 480 triangles a sphere), the same vendored three.js and OrbitControls, the
  same canvas size, camera and placement; sphere diameter = the viewer's point size (1.5 mm).

Measured on each of ``--loads`` fresh page loads (median shown), each folder served by a local
``http.server``:

- frames per second, rendering-bound: the camera orbits 0.01 rad a frame and the page's own
  synchronous ``render()`` is called back to back, each frame forced to finish (``readPixels``
  of one pixel, ``gl.finish``), for ``--seconds`` and at least 20 frames (``performance.now``);
- frames per second under ``requestAnimationFrame``, orbiting the same way for ``--seconds`` and
  at least 5 frames, not forced frame by frame but timed until the last one is finished (rAF
  may be paced by the browser);
- draw calls, triangles and points of one frame (``renderer.info.render``);
- bytes transferred: the bodies of all http responses, vendored three.js apart;
- time to first frame: the page's ``firstFrameMs`` (``performance.now()``, i.e. from navigation
  start, right after the first ``renderer.render`` issued it) and, drawn, the time at the next
  animation frame once the GPU has finished it;
- the WebGL renderer string (``WEBGL_debug_renderer_info``).

Prints a Markdown table and writes it with the raw figures (``viewer.md``, ``viewer.json``) to
``--out``.
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from llnm3d import Atlas
from llnm3d.export import published_points_to_atlas, read_points_csv
from llnm3d.site import build_site, serving

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "examples" / "llnm-net-published-3d" / "points.csv"
VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--enable-unsafe-swiftshader",
                 "--use-gl=angle", "--use-angle=swiftshader", "--disable-gpu-vsync",
                 "--disable-frame-rate-limit"]
POINT_MM = 1.5  # viewer.js setupPublished: a point is 1.5 field voxels wide (1 mm, no field)
MIN_FRAMES, MIN_RAF_FRAMES = 20, 5

BASELINE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>One mesh per point</title>
<link rel="icon" href="data:,">
<style>html, body {{ margin: 0; background: #2b3038; }} canvas {{ display: block; }}</style>
<script type="importmap">
{{"imports": {{"three": "./vendor/three/build/three.module.js",
  "three/addons/": "./vendor/three/examples/jsm/"}}}}
</script></head><body>
<script>const POINTS = {points};</script>
<script type="module">
import * as THREE from 'three';
import {{ OrbitControls }} from 'three/addons/controls/OrbitControls.js';
let markReady;
const bench = {{ ready: new Promise((resolve) => {{ markReady = resolve; }}), firstFrameMs: null }};
window.bench = bench;
const renderer = new THREE.WebGLRenderer({{ antialias: true }});
renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
renderer.setSize({width}, {height});
renderer.setClearColor(0x2b3038);
document.body.append(renderer.domElement);
const scene = new THREE.Scene();
const camera = new THREE.PerspectiveCamera({fov}, {width} / {height}, {near}, {far});
camera.position.fromArray({position});
const controls = new OrbitControls(camera, renderer.domElement);
controls.target.fromArray({target});
controls.update();
for (const [x, y, z, r, g, b] of POINTS) {{
  const color = new THREE.Color().setRGB(r, g, b, THREE.SRGBColorSpace);
  const sphere = new THREE.Mesh(new THREE.SphereGeometry({radius}, 16, 16),
    new THREE.MeshBasicMaterial({{ color }}));
  sphere.position.set(x, y, z);
  scene.add(sphere);
}}
function render() {{
  renderer.render(scene, camera);
  if (bench.firstFrameMs === null) bench.firstFrameMs = performance.now();
}}
controls.addEventListener('change', () => requestAnimationFrame(render));
Object.assign(bench, {{ renderer, scene, camera, controls, render }});
render();
markReady();
</script></body></html>
"""

# Runs in the page: `hook` names the page API (window.llnm3d or window.bench).
MEASURE_JS = """async ({hook, seconds, minFrames, minRafFrames}) => {
  const api = window[hook];
  await api.ready;
  const gl = api.renderer.getContext();
  const camera = api.camera, target = api.controls.target;
  const pixel = new Uint8Array(4);
  const finish = () => {
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
    gl.finish();
  };
  const orbit = (angle) => {
    const dx = camera.position.x - target.x, dz = camera.position.z - target.z;
    const c = Math.cos(angle), s = Math.sin(angle);
    camera.position.x = target.x + c * dx - s * dz;
    camera.position.z = target.z + s * dx + c * dz;
    camera.lookAt(target);
  };
  const debug = gl.getExtension('WEBGL_debug_renderer_info');
  const out = {
    firstFrameMs: api.firstFrameMs, firstFrameDoneMs: window.__firstFrameDoneMs,
    glRenderer: gl.getParameter(debug ? debug.UNMASKED_RENDERER_WEBGL : gl.RENDERER),
    canvas: [gl.drawingBufferWidth, gl.drawingBufferHeight],
    camera: {position: camera.position.toArray(), target: target.toArray(), fov: camera.fov,
             near: camera.near, far: camera.far},
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
      orbit(0.01); api.render(); n += 1;
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

# Added before the page's scripts: at the first animation frame after the page's first render,
# wait for the GPU to finish it and note the time (the page's firstFrameMs is when the commands
# were issued, not drawn).
FIRST_FRAME_DONE_JS = """(() => {
  const poll = () => {
    const api = window.%s;
    if (api?.renderer && api.firstFrameMs != null) {
      const gl = api.renderer.getContext();
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
      gl.finish();
      window.__firstFrameDoneMs = performance.now();
    } else requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
})();"""


def write_baseline(folder: Path, site: Path, view: dict) -> None:
    """The one-mesh-per-point page, with the site's vendored three.js, camera and canvas size."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(site / "vendor", folder / "vendor")
    points = read_points_csv(CSV)
    atlas = published_points_to_atlas(points, Atlas.default())  # as build_site places them
    world = [[x, z, -y] for x, y, z in atlas.tolist()]  # viewer.js atlasToWorld
    rows = [xyz + rgb for xyz, rgb in zip(world, points[list("rgb")].values.tolist(), strict=True)]
    camera = view["camera"]
    (folder / "index.html").write_text(BASELINE_HTML.format(
        points=json.dumps(rows), width=view["canvas"][0], height=view["canvas"][1],
        fov=camera["fov"], near=camera["near"], far=camera["far"],
        position=json.dumps(camera["position"]), target=json.dumps(camera["target"]),
        radius=POINT_MM / 2))


def measure(browser, url: str, hook: str, seconds: float, shot: Path | None = None) -> dict:
    """One fresh page load (new context, empty cache): the figures of MEASURE_JS plus bytes."""
    started = time.perf_counter()
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    page.add_init_script(FIRST_FRAME_DONE_JS % hook)
    responses = []
    page.on("response", lambda response: responses.append(response))
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url, wait_until="load", timeout=300_000)
    page.evaluate(f"window.{hook}.ready")
    page.wait_for_function("window.__firstFrameDoneMs !== undefined", timeout=300_000)
    if shot is not None:  # before the frame-rate loops, which may leave the GPU process busy
        page.screenshot(path=str(shot), timeout=300_000)
    result = page.evaluate(MEASURE_JS, {"hook": hook, "seconds": seconds,
                                        "minFrames": MIN_FRAMES, "minRafFrames": MIN_RAF_FRAMES})
    sizes = {r.url: len(r.body()) for r in responses if r.url.startswith("http")}
    result["bytes"] = sum(sizes.values())
    result["bytes_three"] = sum(n for u, n in sizes.items() if "/vendor/three/" in u)
    result["files"] = sizes
    result["errors"] = errors + (page.evaluate(f"window.{hook}.errors ?? []") or [])
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
    ("time to first frame issued (ms from navigation start)", "firstFrameMs", "{:,.0f}"),
    ("time to first frame drawn (forced finish, ms)", "firstFrameDoneMs", "{:,.0f}"),
    ("bytes transferred, total", "bytes", fmt_bytes),
    ("bytes transferred, vendored three.js", "bytes_three", fmt_bytes),
    ("bytes transferred, the rest (page, data)", "bytes_rest", fmt_bytes),
]


def median(runs: list[dict]) -> dict:
    keys = [key for _, key, _ in ROWS if key != "bytes_rest"]
    out = {key: statistics.median(run[key] for run in runs) for key in keys}
    out["bytes_rest"] = out["bytes"] - out["bytes_three"]
    return out


def table(ours: dict, mesh: dict, shipped: dict) -> str:
    lines = ["| metric | llnm3d viewer (points only) | one mesh per point | ratio (llnm3d / mesh) "
             "| llnm3d viewer with capsule |", "|---|---|---|---|---|"]
    for name, key, form in ROWS:
        show = form.format if isinstance(form, str) else form
        ratio = f"{ours[key] / mesh[key]:.2f}" if mesh[key] else "-"
        lines.append(f"| {name} | {show(ours[key])} | {show(mesh[key])} | {ratio} "
                     f"| {show(shipped[key])} |")
    return "\n".join(lines)


def run_pages(work: Path, loads: int, seconds: float) -> tuple[dict, str]:
    """Build both pages, serve them and measure each ``loads`` times; the runs per page."""
    site = build_site(work / "llnm3d", points_csv=CSV)
    mesh_dir = work / "mesh"
    mesh_dir.mkdir(exist_ok=True)
    with serving(site) as site_url, serving(mesh_dir) as mesh_url, \
            sync_playwright() as p:
        pages = {"ours": (site_url + "#layers=published_points", "llnm3d"),
                 "shipped": (site_url, "llnm3d"), "mesh": (mesh_url, "bench")}
        return _measure_pages(p, pages, site, mesh_dir, loads, seconds, work)


def _measure_pages(p, pages: dict, site: Path, mesh_dir: Path, loads: int, seconds: float,
                   work: Path) -> tuple[dict, str]:
    """Measure each page (url, hook name) ``loads`` times in rotated order."""
    runs = {name: [] for name in pages}
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
    warm_up = measure(browser, pages["ours"][0], "llnm3d", 0.1)  # not counted
    write_baseline(mesh_dir, site, warm_up)  # same camera and canvas size
    for load in range(loads):
        for name in list(pages)[load % 3:] + list(pages)[:load % 3]:  # rotated order
            address, hook = pages[name]
            shot = work / f"{name}.png" if load == 0 else None
            runs[name].append(measure(browser, address, hook, seconds, shot))
            print(f"load {load + 1}/{loads} {name}: {runs[name][-1]['fps']:.1f} frames/s",
                  file=sys.stderr)
    version = browser.version
    browser.close()
    return runs, version


def header(args, runs: dict, version: str) -> str:
    first = runs["ours"][0]
    page_bytes = (args.work / "mesh" / "index.html").stat().st_size
    return (f"command: `python {' '.join(sys.argv)}`\n\n"
            f"Chromium {version}, WebGL renderer: {first['glRenderer']}; viewport "
            f"{VIEWPORT['width']}x{VIEWPORT['height']}, canvas {first['canvas'][0]}x"
            f"{first['canvas'][1]}, antialias on both; {len(read_points_csv(CSV)):,} points; "
            f"median of {args.loads} page loads. Rendering-bound: {args.seconds:g} s and at "
            f"least {MIN_FRAMES} frames, each forced to finish; requestAnimationFrame: "
            f"{args.seconds:g} s and at least {MIN_RAF_FRAMES} frames, timed until the last "
            f"is finished.\n\n"
            f"The baseline page inlines the points as a JS array ({fmt_bytes(page_bytes)}); "
            f"the published index.html writes four statements per sphere (about 1.98 MB) "
            f"and loads three.js r128 from a CDN.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench_viewer")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "viewer")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--loads", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs, version = run_pages(args.work, args.loads, args.seconds)
    medians = {name: median(r) for name, r in runs.items()}
    text = (header(args, runs, version) + "\n"
            + table(medians["ours"], medians["mesh"], medians["shipped"]) + "\n")
    errors = {name: sorted({e for run in r for e in run["errors"]}) for name, r in runs.items()}
    if any(errors.values()):
        text += f"\npage errors: {json.dumps(errors)}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "viewer.md").write_text(text)
    (args.out / "viewer.json").write_text(json.dumps(
        {"command": sys.argv, "chromium": version, "viewport": VIEWPORT, "medians": medians,
         "runs": runs}, indent=1))
    print(text)
    print(f"written: {args.out / 'viewer.md'}, {args.out / 'viewer.json'} "
          f"(screenshots in {args.work})")


if __name__ == "__main__":
    main()
