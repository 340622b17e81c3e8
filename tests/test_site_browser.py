"""The static viewer in a real browser: Debian's Chromium (software WebGL) driven by Playwright.

The site is built by ``llnm3d.site.build_site`` from the small test cohort's statistics plus a
synthetic coloured point set, served over http (ES modules do not load from file://).
"""

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api

from llnm3d.site import serving

pytestmark = [pytest.mark.slow, pytest.mark.browser]


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--enable-unsafe-swiftshader",
                 "--use-gl=angle", "--use-angle=swiftshader"]
BACKGROUND = (0x2B, 0x30, 0x38)   # viewer/scene.js BACKGROUND
HOSTILE = '<b>bold</b> & <script>window.hacked = 1</script>'


@pytest.fixture(scope="module")
def viewer_stats_dir(publishable_stats_dir, tmp_path_factory):
    """The publishable stats plus the spatial model's two maps (the small cohort is too small
    for the spatial model): a significance map marking voxels far from the cohort rate, and a
    posterior probability that grows with the risk. Test data for the filters and selector."""
    from llnm3d.statistics import Stats, load_stats

    stats = load_stats(publishable_stats_dir)
    probability = stats.volumes["probability"]
    rate = stats.summary["prevalence"]
    volumes = stats.volumes | {
        "significance": np.where(np.isnan(probability), np.nan, np.sign(
            probability - rate) * (np.abs(probability - rate) > 0.15)).astype(np.float32),
        "probability_above_rate": np.clip(probability + 0.1, 0, 1).astype(np.float32),
    }
    return Stats(volumes, stats.origin_mm, stats.spacing_mm, stats.regions,
                 stats.capsule_distance, stats.summary | {"maps": list(volumes)}).save(
        tmp_path_factory.mktemp("viewer_stats"))


@pytest.fixture(scope="module")
def site(viewer_stats_dir, atlas, tmp_path_factory):
    from llnm3d.site import build_site

    folder = tmp_path_factory.mktemp("browser-site")
    rng = np.random.default_rng(3)
    direction = rng.normal(size=(300, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    xyz = 128 + direction * [60, 40, 25]
    colours = np.column_stack([np.full(300, 0.95), rng.uniform(0.2, 0.8, 300), np.full(300, 0.3)])
    points_csv = folder / "points.csv"
    np.savetxt(points_csv, np.hstack([xyz, colours]), delimiter=",", header="x,y,z,r,g,b",
               comments="")
    out = build_site(folder / "site", viewer_stats_dir, points_csv=points_csv, atlas=atlas,
                     title=f"Viewer test {HOSTILE}", description=f"Description {HOSTILE}")
    return Path(out)


@pytest.fixture(scope="module")
def data(site):
    return json.loads((site / "data.json").read_text())


@pytest.fixture(scope="module")
def base_url(site):
    with serving(site) as url:
        yield url + "index.html"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not installed: `make test-slow` installs it (apt-get)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """A viewer page that records console errors, page errors and dialogs."""

    def __init__(self, browser, url, init_script=None, block=None):
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.problems = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"),
                                          d.dismiss()))
        if init_script:
            self.page.add_init_script(init_script)
        if block:
            self.page.route(f"**/{block}", lambda route: route.fulfill(status=404, body=""))
        self.open(url)

    def open(self, url=None):
        if url is None:
            self.page.reload()
        else:
            self.page.goto(url)
        self.page.wait_for_function("window.llnm3d !== undefined")
        self.page.evaluate("window.llnm3d.ready")

    def js(self, expression, arg=None):
        return self.page.evaluate(expression, arg)

    def text(self, selector):
        return self.page.locator(selector).inner_text()

    def count(self):
        match = re.fullmatch(r"([\d,]+) of ([\d,]+) voxels shown", self.text("#shown-count"))
        assert match, self.text("#shown-count")
        return int(match[1].replace(",", "")), int(match[2].replace(",", ""))

    def wait_for_hash(self):
        """Wait until the debounced URL hash holds the current view."""
        self.page.wait_for_function("""() => {
            const v = window.llnm3d.viewState();
            return new URLSearchParams(location.hash.slice(1)).get('thr') === v.threshold.toFixed(3)
                && location.hash.includes(encodeURIComponent(v.camera.join(',')));
        }""")

    def screen_point_of_voxel(self, layer="field", pick="max"):
        """Page coordinates of a visible voxel (the most probable one) or a published point."""
        return self.js("""([layer, pick]) => {
            const api = window.llnm3d;
            api.render();
            const object = layer === 'field' ? api.fieldPoints : (() => {
                let found = null;
                api.layers[layer].traverse((n) => { if (n.isPoints) found = n; });
                return found;
            })();
            const position = object.geometry.getAttribute('position');
            let index = 0;
            if (pick === 'max') {
                const prob = object.geometry.getAttribute('_prob').array;
                for (let i = 1; i < prob.length; i += 1) if (prob[i] > prob[index]) index = i;
            }
            const v = new api.camera.position.constructor().fromBufferAttribute(position, index)
                .applyMatrix4(object.matrixWorld).project(api.camera);
            const rect = api.renderer.domElement.getBoundingClientRect();
            return [rect.left + (v.x + 1) / 2 * rect.width, rect.top + (1 - v.y) / 2 * rect.height];
        }""", [layer, pick])

    def close(self):
        self.page.close()


@pytest.fixture
def viewer(browser, base_url):
    page = Page(browser, base_url)
    yield page
    page.close()


def test_page_loads_without_errors_and_draws(viewer, data, tmp_path):
    assert viewer.js("window.llnm3d.errors") == []
    assert viewer.js("window.llnm3d.firstFrameMs") > 0
    viewer.page.wait_for_timeout(100)
    png = viewer.page.screenshot()
    (tmp_path / "viewer.png").write_bytes(png)
    if os.environ.get("LLNM3D_SCREENSHOT"):
        shutil.copyfile(tmp_path / "viewer.png", os.environ["LLNM3D_SCREENSHOT"])
    from PIL import Image

    canvas = viewer.page.locator("#canvas")
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=int)
    drawn = np.abs(pixels - BACKGROUND).max(axis=2) > 24
    assert drawn.mean() > 0.02, f"only {drawn.mean():.1%} of the canvas differs from the background"
    assert viewer.problems == []


def test_probability_field_is_one_draw_call(viewer, data):
    calls = viewer.js("""() => {
        const api = window.llnm3d;
        const hidden = [];
        api.scene.traverse((n) => {
            if ((n.isMesh || n.isPoints || n.isLine) && n !== api.fieldPoints && n.visible) {
                n.visible = false; hidden.push(n);
            }
        });
        api.render();
        const result = [api.renderer.info.render.calls, api.renderer.info.render.points];
        hidden.forEach((n) => { n.visible = true; });
        return result;
    }""")
    assert viewer.js("window.llnm3d.fieldPoints.material.type") == "ShaderMaterial"
    assert calls == [1, viewer.js("window.llnm3d.drawnCount()")]
    assert 0 < calls[1] <= data["points"]


def test_legend_shows_the_probability_range_and_min_cases(viewer, data):
    low, high = data["probability_range"]
    legend = viewer.text("#legend")
    assert f"{low:.3f}" in legend and f"{high:.3f}" in legend
    assert "LLNM probability" in legend
    assert f"fewer than {data['min_cases']} nodules" in legend


def test_threshold_and_coverage_sliders_change_the_shown_count(viewer, data):
    shown, total = viewer.count()
    assert shown == total == data["points"] == viewer.js("window.llnm3d.shownCount()")
    threshold = viewer.page.locator("#threshold")
    threshold.focus()
    for _ in range(20):
        threshold.press("ArrowRight")
    fewer, _ = viewer.count()
    assert 0 <= fewer < shown
    assert fewer == viewer.js("window.llnm3d.shownCount()")
    threshold.press("Home")
    coverage = viewer.page.locator("#coverage")
    coverage.focus()
    coverage.press("End")
    assert viewer.count()[0] < shown
    assert viewer.problems == []


def test_hover_and_click_show_a_readout(viewer, data):
    x, y = viewer.screen_point_of_voxel()
    viewer.page.mouse.move(x, y)
    readout = viewer.page.locator("#readout")
    readout.wait_for(state="visible")
    text = readout.inner_text()
    low, high = data["probability_range"]
    probability = float(re.search(r"LLNM probability (\d\.\d{3})", text)[1])
    assert low - 1e-3 <= probability <= high + 1e-3
    assert re.search(r"95 % interval\s+(\d\.\d{3}) to (\d\.\d{3})", text)
    coverage = int(re.search(r"Coverage\s+(\d+) nodules", text)[1])
    assert coverage >= data["min_cases"]
    names = list(data["region_names"].values()) + ["outside the gland"]
    assert any(name in text for name in names), text
    assert re.search(r"mm (left|right), [\d.]+ mm (anterior|posterior), [\d.]+ mm "
                     r"(superior|inferior)", text)
    viewer.page.mouse.click(x, y)
    assert "Pinned" in readout.inner_text()
    viewer.page.mouse.move(5, 5)
    assert readout.is_visible()

    px, py = viewer.screen_point_of_voxel("published_points", pick="first")
    viewer.page.mouse.move(px, py)
    viewer.page.wait_for_function(
        "document.querySelector('#readout').textContent.includes('Published point')")
    assert "colour only" in readout.inner_text()
    assert viewer.problems == []


def test_url_hash_round_trips_the_view(viewer):
    page = viewer.page
    canvas = page.locator("#canvas")
    canvas.focus()
    canvas.press("2")          # left lateral
    canvas.press("ArrowLeft")  # rotate
    canvas.press("+")          # zoom in
    threshold = page.locator("#threshold")
    threshold.focus()
    for _ in range(8):
        threshold.press("ArrowRight")
    page.locator("#clip-x-min").focus()
    for _ in range(6):
        page.keyboard.press("ArrowRight")
    page.locator("#layer-capsule").uncheck()
    page.locator("#cmap").select_option("viridis")
    page.locator("#filter").select_option("interval")
    page.locator("#scale").select_option("diverging")
    x, y = viewer.js("window.llnm3d.slicePoint('coronal', window.llnm3d.state.cursor)")
    was = viewer.js("window.llnm3d.state.cursor[0]")
    page.mouse.click(x - 12, y + 9)   # moves the cursor in x and z
    page.wait_for_function("(x) => window.llnm3d.state.cursor[0] !== x", arg=was)
    page.locator("#opacity").focus()
    page.keyboard.press("ArrowLeft")
    viewer.wait_for_hash()
    before = viewer.js("window.llnm3d.viewState()")
    assert "capsule" not in before["layers"] and before["cmap"] == "viridis"
    assert (before["filter"], before["scale"]) == ("interval", "diverging")
    viewer.open()
    after = viewer.js("window.llnm3d.viewState()")
    assert np.allclose(after.pop("camera"), before.pop("camera"), atol=0.05)
    assert after == before
    assert not page.locator("#layer-capsule").is_checked()
    assert page.locator("#cmap").input_value() == "viridis"
    assert viewer.problems == []


def test_keyboard_presets_and_focusable_controls(viewer):
    page = viewer.page
    canvas = page.locator("#canvas")
    assert canvas.get_attribute("tabindex") == "0"
    canvas.focus()
    views = {}
    for key in "12345":
        canvas.press(key)
        camera = viewer.js("window.llnm3d.viewState().camera")
        views[key] = np.subtract(camera[:3], camera[3:6])
    # three.js world: +x patient left, +y superior, +z anterior.
    assert views["1"][2] > 0 and abs(views["1"][0]) < 0.05
    assert views["2"][0] > 0 and views["3"][0] < 0
    assert views["4"][1] < 0   # transverse: from the feet
    assert views["5"][0] < 0   # longitudinal: from the patient's right
    distance = np.linalg.norm(views["5"])
    canvas.press("-")
    camera = viewer.js("window.llnm3d.viewState().camera")
    assert np.linalg.norm(np.subtract(camera[:3], camera[3:6])) > distance
    labelled = [("slider", "Show LLNM probability"), ("slider", "Minimum coverage"),
                ("combobox", "colour map"), ("combobox", "Map shown"),
                ("combobox", "Voxels shown"), ("combobox", "Colour scale"),
                ("slider", "Capsule opacity"), ("slider", "z to"),
                ("checkbox", "Probability field"), ("button", "Anterior"),
                ("button", "Save PNG")]
    for role, name in labelled:
        assert page.get_by_role(role, name=re.compile(name)).count() >= 1, (role, name)
    page.locator("body").focus()
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(viewer.js("document.activeElement.id"))
    assert {"screenshot", "threshold", "coverage", "cmap", "map", "filter", "scale",
            "layer-field", "clip-x-min"} <= reached


def test_data_text_is_shown_literally(viewer):
    assert viewer.js("window.hacked") is None
    assert HOSTILE in viewer.text("h1")
    assert viewer.js("document.querySelector('h1 b, #description b, main script')") is None
    regions = viewer.text("#table-regions")
    assert "suppressed (<" in regions or re.search(r"\d\.\d{3}", regions)


def test_screenshot_button_downloads_a_png(viewer):
    with viewer.page.expect_download() as download:
        viewer.page.locator("#screenshot").click()
    path = download.value.path()
    from PIL import Image

    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] >= 800


def test_messages_for_missing_webgl_and_missing_assets(browser, base_url, data):
    no_webgl = Page(browser, base_url, init_script="""
        const original = HTMLCanvasElement.prototype.getContext;
        HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {
            return kind.startsWith('webgl') ? null : original.call(this, kind, ...rest);
        };""")
    assert "WebGL" in no_webgl.text("#messages")
    assert no_webgl.text("#table-regions")   # the tables still work
    assert no_webgl.js("window.llnm3d.renderer") is None
    no_webgl.close()

    missing = Page(browser, base_url, block="assets/capsule.glb")
    assert "Could not load" in missing.text("#messages")
    assert missing.js("window.llnm3d.fieldPoints") is not None
    assert missing.count()[1] == data["points"]
    missing.close()


def test_empty_field_and_points_only_sites(browser, site, publishable_stats_dir, atlas, tmp_path):
    """A site whose minimum hides every voxel shows the surface and says why; a site of the
    published points alone works without field controls."""
    from llnm3d.site import build_site

    empty = build_site(tmp_path / "empty", publishable_stats_dir, atlas=atlas, min_cases=10**6)
    points_only = build_site(tmp_path / "points", points_csv=site.parent / "points.csv",
                             atlas=atlas)
    for folder, layer in ((empty, "capsule"), (points_only, "published_points")):
        with serving(folder) as url:
            page = Page(browser, url + "index.html")
            assert page.js("window.llnm3d.fieldPoints") is None
            assert page.page.locator(f"#layer-{layer}").is_checked()
            assert not page.page.locator("#field-controls").is_visible()
            assert not page.page.locator("#legend").is_visible()
            if folder == empty:
                assert "No voxel has at least 1,000,000 nodules" in page.text("#messages")
            else:
                assert page.text("#messages") == "" and page.problems == []
            page.close()


def field_truth(stats_dir, data):
    """The field's voxels from the stats themselves (not from the site): values of each map at
    every shown voxel, and their atlas positions (mm)."""
    from llnm3d.export import shown_voxels
    from llnm3d.grid import grid_step
    from llnm3d.statistics import load_stats

    stats = load_stats(stats_dir)
    step = grid_step(data["field_spacing_mm"], stats.spacing_mm)
    sub = (slice(None, None, step),) * 3
    shown = shown_voxels(stats, data["min_cases"])[sub]
    k, j, i = np.nonzero(shown)
    positions = stats.origin_mm + data["field_spacing_mm"] * np.column_stack([i, j, k])
    return {name: volume[sub][shown] for name, volume in stats.volumes.items()}, positions


def test_slices_and_3d_view_share_one_cursor(viewer, data, viewer_stats_dir):
    values, positions = field_truth(viewer_stats_dir, data)
    page = viewer.page
    assert [viewer.page.locator(f"#slice-{p}").is_visible()
            for p in ("transverse", "coronal", "longitudinal")] == [True] * 3
    x, y = viewer.screen_point_of_voxel()
    page.mouse.click(x, y)
    cursor = viewer.js("window.llnm3d.state.cursor")
    marker = viewer.js("window.llnm3d.markerPosition()")
    assert np.allclose(marker, [cursor[0], cursor[2], -cursor[1]])   # atlas -> three.js world
    # The cursor is on a field voxel, and the readout gives that voxel's probability.
    at = np.flatnonzero(np.abs(positions - cursor).max(axis=1) < 1e-3)
    assert len(at) == 1
    readout = viewer.text("#readout")
    assert f"LLNM probability {values['probability'][at[0]]:.3f}" in readout
    assert "Pinned" in readout
    # A click in the transverse slice moves x and y, keeps z, and moves the 3D marker there.
    target = [cursor[0] - 6, cursor[1] + 3, cursor[2]]
    page.mouse.click(*viewer.js("(p) => window.llnm3d.slicePoint('transverse', p)", target))
    # The panel moves the cursor at the next animation frame.
    page.wait_for_function("(c) => window.llnm3d.state.cursor[0] !== c", arg=cursor[0])
    moved = viewer.js("window.llnm3d.state.cursor")
    assert np.allclose(moved, target, atol=0.51)
    assert moved[2] == cursor[2]
    marker = viewer.js("window.llnm3d.markerPosition()")
    assert np.allclose(marker, [moved[0], moved[2], -moved[1]])
    assert "z = " in viewer.text("#slices") and "Pinned" in viewer.text("#readout")
    # Keyboard: Page Up moves the transverse slice one field voxel up.
    page.locator("#slice-transverse").focus()
    page.keyboard.press("PageUp")
    assert viewer.js("window.llnm3d.state.cursor[2]") == pytest.approx(
        moved[2] + data["slices"]["spacing_mm"])
    assert viewer.problems == []


def test_slice_and_preset_orientation_follow_ultrasound(viewer):
    """Transverse: the patient's right on the image left, anterior at the top; longitudinal:
    cranial on the left, anterior at the top; the same for the 3D presets 4 and 5."""
    def at(panel, position):
        return viewer.js("([a, p]) => window.llnm3d.slicePoint(a, p)", [panel, position])

    right, left = at("transverse", [-20, 5, 5]), at("transverse", [20, 5, 5])
    anterior, posterior = at("transverse", [0, 0, 5]), at("transverse", [0, 15, 5])
    assert right[0] < left[0] and anterior[1] < posterior[1]
    cranial, caudal = at("longitudinal", [20, 5, 20]), at("longitudinal", [20, 5, -10])
    front, back = at("longitudinal", [20, 0, 5]), at("longitudinal", [20, 15, 5])
    assert cranial[0] < caudal[0] and front[1] < back[1]
    superior, inferior = at("coronal", [0, 5, 20]), at("coronal", [0, 5, -10])
    assert superior[1] < inferior[1]
    assert at("coronal", [-20, 5, 0])[0] < at("coronal", [20, 5, 0])[0]

    project = """(p) => {
        const api = window.llnm3d;
        const v = new api.camera.position.constructor(p[0], p[2], -p[1]).project(api.camera);
        return [v.x, v.y];
    }"""
    canvas = viewer.page.locator("#canvas")
    canvas.focus()
    canvas.press("4")
    right, left = viewer.js(project, [-20, 5, 5]), viewer.js(project, [20, 5, 5])
    a, p = viewer.js(project, [0, -5, 5]), viewer.js(project, [0, 20, 5])
    assert right[0] < left[0] and a[1] > p[1]          # NDC y points up
    canvas.press("5")
    s, i = viewer.js(project, [20, 5, 25]), viewer.js(project, [20, 5, -15])
    a, p = viewer.js(project, [20, -5, 5]), viewer.js(project, [20, 20, 5])
    assert s[0] < i[0] and a[1] > p[1]
    assert viewer.problems == []


def test_filters_show_exactly_the_voxels_that_differ_from_the_cohort_rate(
        viewer, data, viewer_stats_dir):
    values, _ = field_truth(viewer_stats_dir, data)
    assert len(values["probability"]) == data["points"]
    rate = data["prevalence"]
    # The interval is stored as unsigned shorts (1/65535): compare away from the rate.
    low, high = values["probability_ci_low"], values["probability_ci_high"]
    expected = {
        "interval": int(((low > rate) | (high < rate)).sum()),
        "band": int((values["significance"] != 0).sum()),
        "fwer": int((values["t_log10p_fwer"] > -np.log10(0.05)).sum()),
    }
    page = viewer.page
    options = page.locator("#filter option").evaluate_all("(os) => os.map((o) => o.value)")
    assert options == ["none", "interval", "band", "fwer"]
    for name, count in expected.items():
        page.locator("#filter").select_option(name)
        assert viewer.count()[0] == count, name
        assert viewer.js("window.llnm3d.shownCount()") == count
    page.locator("#filter").select_option("none")
    assert viewer.count()[0] == data["points"]
    assert viewer.problems == []


def test_map_selector_scales_and_readout(viewer, data, viewer_stats_dir):
    values, positions = field_truth(viewer_stats_dir, data)
    page = viewer.page
    options = page.locator("#map option").evaluate_all("(os) => os.map((o) => o.value)")
    assert options[:3] == ["probability", "interval_width", "coverage"]
    assert {"t", "t_log10p_fwer", "probability_above_rate"} <= set(options)
    assert "significance" not in options   # a filter, not a colour map
    # The t map: the legend names it and spans its shown range; the scale may diverge about 0.
    page.locator("#map").select_option("t")
    legend = viewer.text("#legend")
    assert "t, outcome vs footprint" in legend
    low, high = values["t"].min(), values["t"].max()
    assert f"{low:.3f}" in legend and f"{high:.3f}" in legend
    assert float(page.locator("#threshold").get_attribute("min")) <= low
    page.locator("#scale").select_option("diverging")
    half = max(high, -low)
    ticks = [viewer.text(f"#legend-{t}") for t in ("min", "mid", "max")]
    assert ticks == [f"{-half:.3f}", "0.000", f"{half:.3f}"]
    # Probability, diverging: centred on the cohort rate, which the legend names.
    page.locator("#map").select_option("probability")
    page.locator("#scale").select_option("diverging")
    assert viewer.text("#legend-mid") == f"cohort rate {data['prevalence']:.3f}"
    # Coverage has no reference value: only the sequential scale.
    page.locator("#map").select_option("coverage")
    assert page.locator("#scale").is_disabled()
    # The readout at the cursor: every map, the capsule distance and both coordinate systems.
    best = int(np.argmax(values["probability"]))
    viewer.js("(p) => window.llnm3d.setCursor(p)", positions[best].tolist())
    text = viewer.text("#readout")
    assert f"LLNM probability {values['probability'][best]:.3f}" in text
    t = values["t"][best]
    assert re.search(r"\bt\s+" + ("\u2212" if t < 0 else "") + f"{abs(t):.2f}", text), text
    p_fwer = 10 ** -values["t_log10p_fwer"][best]
    assert re.search(r"FWER p \(t\)\s+" + re.escape(f"{p_fwer:.3f}"), text), text
    x, y, z = positions[best]
    assert re.search(r"Capsule\s+[\d.]+ mm (inside|outside)|on the capsule", text)
    def fmt(v):
        return ("\u2212" if v < 0 else "") + f"{abs(v):.1f}"

    assert f"({fmt(x)}, {fmt(y)}, {fmt(z)}) mm" in text                      # LPS
    assert f"({fmt(-x)}, {fmt(-y)}, {fmt(z)}) mm" in text                    # RAS
    assert "RAS: NIfTI" in text and "LPS: ITK" in text
    assert viewer.problems == []


def shell_count(positions, spacing_mm):
    """Voxels of a set that have at least one of their six neighbours outside the set."""
    ijk = np.rint((positions - positions.min(axis=0)) / spacing_mm).astype(int)
    occupied = set(map(tuple, ijk))
    steps = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    return sum(any((i + a, j + b, k + c) not in occupied for a, b, c in steps)
               for i, j, k in ijk)


def test_field_draws_exactly_the_visible_shell(viewer, data, viewer_stats_dir):
    """Only voxels with a face not covered by another shown voxel are drawn: counted here from
    the stats themselves, with every voxel shown and with the threshold raised."""
    values, positions = field_truth(viewer_stats_dir, data)
    spacing = data["field_spacing_mm"]
    assert viewer.js("window.llnm3d.drawnCount()") == shell_count(positions, spacing)
    threshold = viewer.page.locator("#threshold")
    threshold.focus()
    for _ in range(30):
        threshold.press("ArrowRight")
    level = np.float32(viewer.js("window.llnm3d.state.threshold"))
    above = values["probability"] >= level
    assert 0 < above.sum() < len(above)
    assert viewer.js("window.llnm3d.drawnCount()") == shell_count(positions[above], spacing)
    assert viewer.problems == []


def test_page_stays_put_and_the_legend_marks_the_cohort_rate(viewer, data):
    page = viewer.page
    before = viewer.js("JSON.stringify(document.querySelector('#canvas').getBoundingClientRect())")
    page.locator("#table-capsule-distance").scroll_into_view_if_needed()
    page.mouse.move(200, 400)
    page.mouse.wheel(0, 3000)
    assert viewer.js("document.querySelector('.panel').scrollTop") > 0   # the panel scrolls
    assert viewer.js("window.scrollY") == 0                                # the page does not
    after = viewer.js("JSON.stringify(document.querySelector('#canvas').getBoundingClientRect())")
    assert after == before
    # The sequential scale marks the cohort rate at its place between the two ends.
    low, high = data["probability_range"]
    bar = page.locator("#legend-bar").bounding_box()
    mark = page.locator("#legend-rate").bounding_box()
    expected = bar["x"] + bar["width"] * (data["prevalence"] - low) / (high - low)
    assert abs(mark["x"] - expected) < 3
    assert f"cohort rate {data['prevalence']:.3f}" in viewer.text("#legend-note")
