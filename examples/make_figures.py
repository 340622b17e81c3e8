"""Render the README figures: the atlas (regions, two views), a phantom contact sheet,
bundled-model heatmaps on real LLNM-Net sample images, and two screenshots of the published
demo site (``site/``) in Debian's Chromium (``/usr/bin/chromium``, driven by Playwright).

Usage::

    python examples/make_figures.py docs

Rendering is off-screen (VTK through EGL), so it works on a headless machine.
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402
import pyvista as pv  # noqa: E402
from PIL import Image  # noqa: E402

from llnm3d import Atlas  # noqa: E402
from llnm3d.atlas import REGION_COLOURS, REGION_NAMES  # noqa: E402
from llnm3d.io import read_grayscale, read_mask  # noqa: E402
from llnm3d.manifest import read_manifest  # noqa: E402
from llnm3d.models.heatmap import compute_heatmaps, load_heatmap, overlay  # noqa: E402
from llnm3d.models.qc import NODULE_COLOUR, contact_sheet, outline  # noqa: E402
from llnm3d.phantom import make_phantom  # noqa: E402

pv.OFF_SCREEN = True
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--enable-unsafe-swiftshader",
                 "--use-gl=angle", "--use-angle=swiftshader"]
# The demo site's views for the README: the field inside the capsule with the slices on the
# peak voxel, and the voxels whose interval excludes the cohort rate on a diverging scale,
# seen as a transverse ultrasound image (preset 4).
VIEWER_SHOTS = {
    "viewer.png": ("", None),
    "viewer_significance.png": ("#map=probability&scale=diverging&filter=interval", "4"),
}


def render_atlas(atlas: Atlas, out_path: Path) -> None:
    """Anterior and right-lateral views of the capsule, coloured by region."""
    surface = pv.wrap(atlas.surface)
    inward = atlas.surface.vertices - 0.75 * atlas.surface.vertex_normals
    regions = atlas.region_of(inward)
    # A vertex whose inward probe misses the gland takes the nearest labelled vertex's region.
    labelled = regions > 0
    if not labelled.all():
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(inward[labelled]).query(inward[~labelled])
        regions[~labelled] = regions[labelled][nearest]
    colours = np.array([[int(REGION_COLOURS[r][i:i + 2], 16) for i in (1, 3, 5)]
                        for r in regions], dtype=np.uint8)
    surface.point_data["rgb"] = colours
    plotter = pv.Plotter(shape=(1, 2), off_screen=True, window_size=(1400, 650))
    views = [("Anterior view (patient right on the left)", (0, -160, 8), "R", "L"),
             ("Right lateral view (anterior on the right)", (-160, 8, 8), "P", "A")]
    for index, (title, position, left, right) in enumerate(views):
        plotter.subplot(0, index)
        plotter.add_mesh(surface, scalars="rgb", rgb=True, smooth_shading=True)
        plotter.add_text(title, font_size=11)
        plotter.add_text(left, position="left_edge", font_size=14)
        plotter.add_text(right, position="right_edge", font_size=14)
        plotter.camera_position = [position, (0, 8, 6), (0, 0, 1)]
    legend = [(REGION_NAMES[k], REGION_COLOURS[k]) for k in sorted(REGION_COLOURS)]
    plotter.add_legend(legend, bcolor="#303030", size=(0.26, 0.30), loc="lower right")
    plotter.screenshot(str(out_path))
    plotter.close()


SAMPLES = Path(__file__).with_name("llnm-net-samples")


def render_real_heatmaps(out_path: Path, cases=("benign_1", "benign_4", "malignant_2",
                                                "malignant_3")) -> None:
    """Bundled-model GradCAM++ overlays on real sample images, nodule outlined in red.

    The samples have no thyroid mask, report, age or sex: the model runs on what is there.
    Default layer (``fused``). The sanity checks show this heat follows the nodule mask on
    these images (README, "Sanity checks").
    """
    with tempfile.TemporaryDirectory() as tmp:
        compute_heatmaps(SAMPLES / "manifest.csv", tmp, resize_masks=True, progress=False)
        tiles = []
        for case in cases:
            image = read_grayscale(SAMPLES / "image" / f"{case}.jpg")
            nodule = read_mask(SAMPLES / "nodule_mask" / f"{case}.jpg", image.shape)
            rgb = overlay(image, load_heatmap(tmp, case))
            rgb[outline(nodule)] = NODULE_COLOUR
            tile = Image.fromarray(rgb)
            tiles.append(tile.resize((320, round(320 * tile.height / tile.width))))
    height = max(t.height for t in tiles)
    sheet = Image.new("RGB", (320 * len(tiles) + 4 * (len(tiles) - 1), height), "black")
    for index, tile in enumerate(tiles):
        sheet.paste(tile, (index * 324, 0))
    sheet.save(out_path)


def render_viewer(site_dir: Path, out_dir: Path) -> None:
    """Screenshots of the viewer (1280x800) for each of :data:`VIEWER_SHOTS`."""
    from playwright.sync_api import sync_playwright

    from llnm3d.site import serving

    with serving(site_dir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=CHROMIUM_ARGS)
        for name, (fragment, preset) in VIEWER_SHOTS.items():
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "index.html" + fragment)
            page.wait_for_function("window.llnm3d !== undefined")
            page.evaluate("window.llnm3d.ready")
            if preset:
                page.locator("#canvas").press(preset)
            # Pin the readout on the cursor the slices open on (the most probable voxel).
            page.evaluate("window.llnm3d.setCursor(window.llnm3d.state.cursor)")
            page.wait_for_timeout(300)
            page.screenshot(path=str(out_dir / name))
            page.close()
        browser.close()


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atlas = Atlas.default()
    render_atlas(atlas, out / "atlas.png")
    with tempfile.TemporaryDirectory() as tmp:
        cohort = make_phantom(tmp, 4, seed=0, atlas=atlas, progress=False)
        contact_sheet(read_manifest(cohort.out_dir / "manifest.csv"),
                      out / "phantom_contact_sheet.png", n=8)
    render_real_heatmaps(out / "real_sample_heatmaps.png")
    render_viewer(ROOT / "site", out)
    print(f"figures written to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
