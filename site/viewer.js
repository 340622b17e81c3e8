// llnm3d static viewer (docs/site-format.md). The probability field is one THREE.Points whose
// shader colours, thresholds and clips every voxel on the GPU, so no control reloads data.
import * as THREE from 'three';
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';

const MAP_LABELS = {
  cividis: 'Cividis (colour-blind safe)', viridis: 'Viridis',
  'published orange': 'Published orange (as the LLNM-Net page)',
};
const DEFAULT_CMAP = 'cividis';
const BACKGROUND = 0x2b3038;
const TISSUE = 0xe6cdc6;
const MARKER = 0xff4f9a;
const DEFAULT_OPACITY = 0.4;
const ISOSURFACE_OPACITY = 0.5;
// Voxel centres sit exactly on slider steps: a small tolerance keeps CPU and GPU in agreement.
const CLIP_EPS_MM = 1e-3;
const AXES = ['x', 'y', 'z'];
// Camera direction from the target, in three.js world axes (x left, y superior, z anterior).
// Superior looks down with anterior at the top of the screen.
const PRESETS = {
  anterior: [0, 0, 1], left: [1, 0, 0], right: [-1, 0, 0], superior: [0, 1, -1e-3],
};
const PRESET_KEYS = { 1: 'anterior', 2: 'left', 3: 'right', 4: 'superior' };
const ORIENTATION = [  // letter, name, atlas direction (LPS)
  ['R', 'right', [-1, 0, 0]], ['L', 'left', [1, 0, 0]], ['A', 'anterior', [0, -1, 0]],
  ['P', 'posterior', [0, 1, 0]], ['S', 'superior', [0, 0, 1]], ['I', 'inferior', [0, 0, -1]],
];
const NICE_LENGTHS_MM = [1, 2, 5, 10, 20, 50, 100, 200];

const $ = (id) => document.getElementById(id);
const fmtP = (p) => Number(p).toFixed(3);
const fmtCount = (n) => Math.round(n).toLocaleString('en-US');
const fmtMm = (v) => `${v < 0 ? '\u2212' : ''}${Math.abs(v).toFixed(1)}`;
const atlasToWorld = (x, y, z) => new THREE.Vector3(x, z, -y);
const worldToAtlas = (v) => [v.x, -v.z, v.y];

let data = null;
let renderer = null;
let scene = null;
let camera = null;
let controls = null;
let field = null;        // the probability field and its attribute arrays, or null
let glandBox = null;     // atlas-mm bounds of the gland (capsule, else field, else everything)
let marker = null;
let publishedTag = null;  // caption above the published point set: its world anchor and node
let pinned = null;       // pick the user clicked, shown when the pointer is elsewhere
let renderQueued = false;
let hashTimer = 0;
const layers = {};       // layer id -> THREE.Object3D
let colourMaps = {};     // name -> [[r, g, b] 0-255, ...]
let lutMap = null;       // the colour map now in the LUT texture
const clipPlanes = AXES.flatMap(() => [new THREE.Plane(), new THREE.Plane()]);
const lut = new THREE.DataTexture(new Uint8Array(256 * 4), 256, 1);
const state = {
  threshold: 0, coverage: 0, cmap: DEFAULT_CMAP, opacity: DEFAULT_OPACITY,
  capsuleColour: false, clip: { x: [0, 0], y: [0, 0], z: [0, 0] }, layers: {},
};

let markReady;
const api = {
  ready: new Promise((resolve) => { markReady = resolve; }),
  renderer: null, scene: null, camera: null, controls: null, fieldPoints: null, layers,
  firstFrameMs: null, errors: [],
  shownCount: () => countShown(),
  render: () => render(),
  viewState: () => viewState(),
};
window.llnm3d = api;

// ---- colour maps -------------------------------------------------------------------------

// The colour maps come from data.json (llnm3d/data/colormaps.json, shared with the export).
function loadColourMaps() {
  colourMaps = Object.fromEntries(Object.entries(data.colormaps)
    .map(([name, stops]) => [name, stops.map((rgb) => rgb.map((c) => Math.round(255 * c)))]));
}

function colourAt(name, t) {
  const stops = colourMaps[name];
  const s = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(s), stops.length - 2);
  const f = s - i;
  return stops[i].map((a, c) => Math.round(a + (stops[i + 1][c] - a) * f));
}

const cssColour = (rgb) => `rgb(${rgb.join(',')})`;

function applyColourMap() {
  if (lutMap === state.cmap) return;
  lutMap = state.cmap;
  const bytes = lut.image.data;
  for (let i = 0; i < 256; i += 1) {
    bytes.set([...colourAt(state.cmap, i / 255), 255], 4 * i);
  }
  lut.needsUpdate = true;
  const stops = Array.from({ length: 9 }, (_, i) => i / 8)
    .map((t) => `${cssColour(colourAt(state.cmap, t))} ${t * 100}%`);
  $('legend-bar').style.background = `linear-gradient(to right, ${stops.join(', ')})`;
  const [lo, hi] = probabilityRange();
  recolourCapsule(lo, hi);
  layers.isosurfaces?.traverse((node) => {
    if (node.isMesh) {
      const level = node.userData.level ?? lo;
      const rgb = colourAt(state.cmap, (level - lo) / (hi - lo || 1));
      node.material.color.setStyle(cssColour(rgb));
    }
  });
}

// The capsule's vertex colours follow the chosen map (from its _prob, -1 where undefined), so
// the surface and the legend agree; glTF vertex colours are linear, hence the conversion.
function recolourCapsule(lo, hi) {
  const colour = new THREE.Color();
  layers.capsule?.traverse((node) => {
    const prob = node.isMesh && node.geometry.getAttribute('_prob');
    if (!prob) return;
    const colours = new Float32Array(3 * prob.count);
    for (let i = 0; i < prob.count; i += 1) {
      const p = prob.getX(i);
      if (p < 0) colour.set(TISSUE);
      else colour.setStyle(cssColour(colourAt(state.cmap, (p - lo) / (hi - lo))));
      colour.toArray(colours, 3 * i);
    }
    node.geometry.setAttribute('color', new THREE.BufferAttribute(colours, 3));
  });
}

function probabilityRange() {
  const range = data.probability_range;
  return range && range[1] > range[0] ? range : [0, 1];
}

// ---- page text: tables, cohort, notes (always textContent: the data may hold markup) ------

const COLUMN_LABELS = {
  region: 'Region', label: 'Label', bin: 'Distance to capsule', low_mm: 'From (mm)',
  high_mm: 'To (mm)', nodules: 'Nodules', events: 'LLNM', risk: 'Risk',
  mean_model_probability: 'Model mean', half: 'Half',
};
const PROBABILITY_COLUMNS = new Set(['risk', 'ci_low', 'ci_high', 'mean_model_probability',
  'probability', 'proportion']);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

const missing = (value) => value === null || value === undefined;

function formatValue(column, value) {
  if (typeof value !== 'number') return String(value);
  if (PROBABILITY_COLUMNS.has(column)) return fmtP(value);
  return Number.isInteger(value) ? fmtCount(value) : value.toFixed(1);
}

// Table columns as shown: events with nodules ("30 / 59") and risk with its interval, so the
// tables fit beside the 3D view. Each column gives a header and the cell's text parts.
function tableColumns(columns) {
  const at = Object.fromEntries(columns.map((c, i) => [c, i]));
  const withEvents = 'events' in at && 'nodules' in at;
  const withCi = 'risk' in at && 'ci_low' in at && 'ci_high' in at;
  const merged = new Set([withEvents && 'events', withCi && 'ci_low', withCi && 'ci_high']
    .filter(Boolean));
  return columns.filter((c) => !merged.has(c)).map((c) => {
    if (c === 'nodules' && withEvents) {
      return {
        header: 'LLNM / nodules', keys: [at.nodules, at.events],
        parts: (row) => [`${fmtCount(row[at.events])} / ${fmtCount(row[at.nodules])}`],
      };
    }
    if (c === 'risk' && withCi) {
      return {
        header: 'Risk (95 % CI)', keys: [at.risk, at.ci_low, at.ci_high],
        parts: (row) => [fmtP(row[at.risk]),
          `${fmtP(row[at.ci_low])}\u2013${fmtP(row[at.ci_high])}`],
      };
    }
    return {
      header: COLUMN_LABELS[c] ?? c.replaceAll('_', ' '), keys: [at[c]],
      parts: (row) => [formatValue(c, row[at[c]])],
    };
  });
}

function tableCell(column, row, isHeader) {
  const cell = element(isHeader ? 'th' : 'td');
  if (isHeader) cell.scope = 'row';
  if (column.keys.some((k) => missing(row[k]))) {
    cell.textContent = 'suppressed';
    cell.className = 'suppressed';
    return cell;
  }
  const [main, detail] = column.parts(row);
  cell.append(main);
  if (detail) cell.append(element('span', detail, 'detail'));
  if (typeof row[column.keys[0]] === 'number') cell.className = 'num';
  return cell;
}

function fillTable(table, spec, caption) {
  table.replaceChildren();
  if (!spec || !spec.rows?.length) {
    table.closest('section').hidden = true;
    return;
  }
  const columns = tableColumns(spec.columns);
  table.append(element('caption', caption, 'visually-hidden'));
  const head = table.createTHead().insertRow();
  for (const column of columns) head.append(element('th', column.header));
  for (const th of head.cells) th.scope = 'col';
  const body = table.createTBody();
  for (const row of spec.rows) {
    const tr = body.insertRow();
    // A row whose every value after its leading labels is suppressed gets one note.
    const labels = row.findIndex((value) => typeof value !== 'string');
    const suppressed = labels > 0 && row.slice(labels).every(missing);
    const shown = suppressed ? columns.filter((column) => column.keys[0] < labels) : columns;
    shown.forEach((column, i) => tr.append(tableCell(column, row, i === 0)));
    if (suppressed) {
      const note = element('td', `suppressed (< ${data.min_cases} nodules)`, 'suppressed');
      note.colSpan = columns.length - shown.length;
      tr.append(note);
    }
  }
}

function fillPage() {
  if (data.title) $('title').textContent = data.title;
  if (data.description) $('description').textContent = data.description;
  fillTable($('table-regions'), data.tables?.regions, 'LLNM risk by atlas region');
  fillTable($('table-capsule-distance'), data.tables?.capsule_distance,
    'LLNM risk by distance from the capsule');
  const facts = [
    ['Nodules', data.nodules != null ? fmtCount(data.nodules) : null],
    ['LLNM events', data.events != null ? fmtCount(data.events) : null],
    ['Prevalence', data.prevalence != null ? `${(100 * data.prevalence).toFixed(1)} %` : null],
    ['Risk map', data.estimator],
    ['Footprint', data.weight],
    ['Minimum cases per voxel or cell', data.min_cases],
    ['Field spacing', data.field_spacing_mm != null ? `${data.field_spacing_mm} mm` : null],
    ['Voxels in the field', data.points != null ? fmtCount(data.points) : null],
    ['Space', data.space],
    ['llnm3d version', data.llnm3d_version],
  ];
  for (const [term, value] of facts) {
    if (value === null || value === undefined) continue;
    $('cohort').append(element('dt', term), element('dd', String(value)));
  }
  for (const note of data.notes ?? []) $('notes').append(element('li', note));
  loadColourMaps();
  for (const name of Object.keys(colourMaps)) {
    const option = element('option', MAP_LABELS[name] ?? name);
    option.value = name;
    $('cmap').append(option);
  }
}

function showMessage(text) {
  api.errors.push(text);
  $('messages').append(element('p', text, 'message'));
}

// ---- scene -------------------------------------------------------------------------------

function webglAvailable() {
  try {
    const gl = document.createElement('canvas').getContext('webgl2');
    gl?.getExtension('WEBGL_lose_context')?.loseContext();
    return Boolean(gl);
  } catch {
    return false;
  }
}

function createScene() {
  renderer = new THREE.WebGLRenderer({ antialias: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  renderer.setClearColor(BACKGROUND);
  renderer.localClippingEnabled = true;
  const canvas = renderer.domElement;
  canvas.id = 'canvas';
  canvas.tabIndex = 0;
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', '3D view of the LLNM probability field; keyboard: arrows '
    + 'rotate, Shift+arrows pan, plus and minus zoom, 1 to 4 preset views, Escape unpins');
  $('view').append(canvas);
  scene = new THREE.Scene();
  camera = new THREE.PerspectiveCamera(35, 1, 1, 5000);
  scene.add(camera);
  scene.add(new THREE.AmbientLight(0xffffff, 0.5));
  const headlight = new THREE.DirectionalLight(0xffffff, 0.9);
  headlight.position.set(0.3, 0.5, 1);
  camera.add(headlight);
  controls = new OrbitControls(camera, canvas);
  controls.minDistance = 5;
  controls.maxDistance = 1500;
  controls.addEventListener('change', onViewChange);
  Object.assign(api, { renderer, scene, camera, controls });
}

async function loadLayer(loader, spec) {
  const gltf = await loader.loadAsync(spec.file);
  const root = gltf.scene;
  root.name = spec.id;
  if (spec.id === 'field') {
    field = setupField(root);
    if (!field) return;  // an empty field (no voxel reached min_cases) gets no layer
    api.fieldPoints = field.points;
  } else if (spec.id === 'capsule' || spec.id === 'isosurfaces') {
    setupSurfaces(spec.id, root);
  } else if (spec.id === 'published_points') {
    setupPublished(root);
  }
  scene.add(root);
  layers[spec.id] = root;
}

function findPoints(root) {
  let found = null;
  root.traverse((node) => { if (!found && node.isPoints) found = node; });
  return found;
}

function setupField(root) {
  const points = findPoints(root);
  if (!points) return null;
  const geometry = points.geometry;
  const attr = (name) => geometry.getAttribute(name)?.array;
  const count = geometry.getAttribute('position').count;
  root.updateMatrixWorld(true);
  const atlas = new Float32Array(3 * count);
  const v = new THREE.Vector3();
  for (let i = 0; i < count; i += 1) {
    v.fromBufferAttribute(geometry.getAttribute('position'), i).applyMatrix4(points.matrixWorld);
    atlas.set(worldToAtlas(v), 3 * i);
  }
  const n = attr('_n');
  let maxN = 0;
  for (let i = 0; i < count; i += 1) maxN = Math.max(maxN, n[i]);
  const spacing = data.field_spacing_mm || 1;
  points.material = new THREE.ShaderMaterial({
    uniforms: {
      uLut: { value: lut }, uRange: { value: new THREE.Vector2(...probabilityRange()) },
      uThreshold: { value: 0 }, uCoverage: { value: 0 }, uSize: { value: spacing },
      uViewportHeight: { value: 1 },
      uClipMin: { value: new THREE.Vector3() }, uClipMax: { value: new THREE.Vector3() },
    },
    vertexShader: FIELD_VERTEX,
    fragmentShader: FIELD_FRAGMENT,
  });
  return {
    points, count, atlas, maxN, spacing,
    prob: attr('_prob'), n, ci: geometry.getAttribute('_ci'), region: attr('_region'),
  };
}

// Hidden voxels are moved outside the clip volume, so they cost no fragments.
const FIELD_VERTEX = /* glsl */ `
attribute float _prob;
attribute float _n;
uniform vec2 uRange;
uniform float uThreshold;
uniform float uCoverage;
uniform float uSize;
uniform float uViewportHeight;
uniform vec3 uClipMin;
uniform vec3 uClipMax;
varying float vT;
void main() {
  vec4 world = modelMatrix * vec4(position, 1.0);
  vec3 atlas = vec3(world.x, -world.z, world.y);
  if (_prob < uThreshold || _n < uCoverage
      || any(lessThan(atlas, uClipMin)) || any(greaterThan(atlas, uClipMax))) {
    gl_Position = vec4(2.0, 2.0, 2.0, 1.0);
    gl_PointSize = 0.0;
    return;
  }
  vT = clamp((_prob - uRange.x) / max(uRange.y - uRange.x, 1e-6), 0.0, 1.0);
  vec4 view = viewMatrix * world;
  gl_Position = projectionMatrix * view;
  gl_PointSize = uSize * projectionMatrix[1][1] * 0.5 * uViewportHeight / -view.z;
}`;

// The colour map is stored as sRGB bytes and written unconverted, so it matches the legend.
const FIELD_FRAGMENT = /* glsl */ `
uniform sampler2D uLut;
varying float vT;
void main() {
  gl_FragColor = vec4(texture2D(uLut, vec2(vT * 255.0 / 256.0 + 0.5 / 256.0, 0.5)).rgb, 1.0);
}`;

// Glass-like surfaces: nearly clear where seen face-on, denser towards the silhouette, so the
// field inside keeps its legend colours while the outline stays readable. Opacity 1 is opaque.
function rimAlpha(shader) {
  shader.fragmentShader = shader.fragmentShader.replace('#include <opaque_fragment>', `
    float rim = 1.0 - abs(dot(normal, normalize(vViewPosition)));
    diffuseColor.a = mix(opacity * opacity * opacity, min(1.0, 2.5 * opacity), pow(rim, 1.5));
    #include <opaque_fragment>`);
}

function setupSurfaces(id, root) {
  root.traverse((node) => {
    if (!node.isMesh) return;
    const isCapsule = id === 'capsule';
    node.userData.level = node.userData.level ?? node.parent?.userData.level;
    node.material = new THREE.MeshLambertMaterial({
      color: TISSUE, transparent: true, depthWrite: false,
      opacity: isCapsule ? DEFAULT_OPACITY : ISOSURFACE_OPACITY,
      side: isCapsule ? THREE.FrontSide : THREE.DoubleSide, clippingPlanes: clipPlanes,
    });
    node.material.onBeforeCompile = rimAlpha;
    node.renderOrder = isCapsule ? 2 : 1;
  });
}

function setupPublished(root) {
  const points = findPoints(root);
  if (!points) return;
  // PointsMaterial scales size by half the viewport height over depth: this makes it 1.5 voxels.
  const mm = 1.5 * (data.field_spacing_mm || 1);
  points.material = new THREE.PointsMaterial({
    size: mm / Math.tan(THREE.MathUtils.degToRad(camera.fov) / 2), vertexColors: true,
  });
}

function computeBounds() {
  const source = layers.capsule ?? layers.field ?? scene;
  const world = new THREE.Box3().setFromObject(source);
  if (world.isEmpty()) world.setFromObject(scene);
  if (world.isEmpty()) world.set(new THREE.Vector3(-1, -1, -1), new THREE.Vector3(1, 1, 1));
  glandBox = {
    min: [world.min.x, -world.max.z, world.min.y],
    max: [world.max.x, -world.min.z, world.max.y],
  };
}

const glandCentre = () => atlasToWorld(...glandBox.min.map((lo, d) => (lo + glandBox.max[d]) / 2));
const glandExtent = () => AXES.map((a, d) => glandBox.max[d] - glandBox.min[d]);
const glandSize = () => Math.max(...glandExtent());

function addMarker() {
  const size = field?.spacing ?? 1;
  marker = new THREE.LineSegments(
    new THREE.EdgesGeometry(new THREE.BoxGeometry(size, size, size)),
    new THREE.LineBasicMaterial({ color: MARKER, depthTest: false }),
  );
  marker.renderOrder = 10;
  marker.visible = false;
  scene.add(marker);
}

// ---- state -> scene ----------------------------------------------------------------------

function defaultState() {
  const clip = {};
  AXES.forEach((a, d) => { clip[a] = [snapDown(glandBox.min[d]), snapUp(glandBox.max[d])]; });
  const visible = {};
  for (const spec of data.layers ?? []) {
    if (layers[spec.id]) visible[spec.id] = Boolean(spec.visible);
  }
  return {
    threshold: Number($('threshold').min), coverage: Number($('coverage').min), cmap: DEFAULT_CMAP,
    opacity: DEFAULT_OPACITY, capsuleColour: false, clip, layers: visible,
  };
}

const snapDown = (v) => Math.floor(v * 2 - 1e-6) / 2;
const snapUp = (v) => Math.ceil(v * 2 + 1e-6) / 2;

function isShown(i) {
  if (field.prob[i] < state.threshold || field.n[i] < state.coverage) return false;
  for (let d = 0; d < 3; d += 1) {
    const v = field.atlas[3 * i + d];
    const [lo, hi] = state.clip[AXES[d]];
    if (v < lo - CLIP_EPS_MM || v > hi + CLIP_EPS_MM) return false;
  }
  return true;
}

function countShown() {
  if (!field) return 0;
  let shown = 0;
  for (let i = 0; i < field.count; i += 1) if (isShown(i)) shown += 1;
  return shown;
}

function applyState() {
  state.threshold = Math.fround(state.threshold);
  if (field) {
    const u = field.points.material.uniforms;
    u.uThreshold.value = state.threshold;
    u.uCoverage.value = state.coverage;
    u.uClipMin.value.set(...AXES.map((a) => state.clip[a][0] - CLIP_EPS_MM));
    u.uClipMax.value.set(...AXES.map((a) => state.clip[a][1] + CLIP_EPS_MM));
    const shown = `${fmtCount(countShown())} of ${fmtCount(field.count)} voxels shown`;
    $('shown-count').textContent = shown;
  }
  AXES.forEach((a, d) => {
    const [lo, hi] = state.clip[a];
    // A plane keeps the side where normal . p + constant >= 0 (world coordinates).
    const normal = atlasToWorld(...AXES.map((b, e) => Number(e === d)));
    clipPlanes[2 * d].set(normal, -(lo - CLIP_EPS_MM));
    clipPlanes[2 * d + 1].set(normal.clone().negate(), hi + CLIP_EPS_MM);
    $(`clip-${a}-value`).textContent = `${fmtMm(lo)} to ${fmtMm(hi)} mm`;
  });
  for (const [id, root] of Object.entries(layers)) root.visible = Boolean(state.layers[id]);
  layers.capsule?.traverse((node) => {
    if (!node.isMesh) return;
    const m = node.material;
    m.opacity = state.opacity;
    m.depthWrite = state.opacity >= 1;
    const useColours = state.capsuleColour && Boolean(node.geometry.getAttribute('color'));
    if (m.vertexColors !== useColours) {
      m.vertexColors = useColours;
      m.color.set(useColours ? 0xffffff : TISSUE);
      m.needsUpdate = true;
    }
  });
  applyColourMap();
  updateLegend();
  $('threshold-value').textContent = fmtP(state.threshold);
  $('coverage-value').textContent = String(state.coverage);
  $('opacity-value').textContent = state.opacity.toFixed(2);
  if (pinned && !pickVisible(pinned)) pinned = null;
  showPick(pinned);
  requestRender();
  scheduleHash();
}

function updateLegend() {
  if (!data.probability_range) return;
  const [lo, hi] = probabilityRange();
  $('legend-min').textContent = fmtP(lo);
  $('legend-mid').textContent = fmtP((lo + hi) / 2);
  $('legend-max').textContent = fmtP(hi);
  const below = Math.min(Math.max((state.threshold - lo) / (hi - lo), 0), 1);
  $('legend-below').style.width = `${100 * below}%`;
  const notes = [`Voxels with fewer than ${fmtCount(state.coverage)} nodules are not shown.`];
  if (state.threshold > lo) notes.push(`Below ${fmtP(state.threshold)} hidden (hatched).`);
  notes.push(`The scale spans all voxels with at least ${fmtCount(data.min_cases)} nodules.`);
  $('legend-note').textContent = notes.join(' ');
}

// ---- controls ----------------------------------------------------------------------------

function setupControls() {
  const [lo, hi] = probabilityRange();
  const threshold = $('threshold');
  threshold.min = String(Math.floor(lo * 100) / 100);
  threshold.max = String(Math.ceil(hi * 100) / 100);
  const coverage = $('coverage');
  coverage.min = String(data.min_cases ?? 0);
  coverage.max = String(Math.max(field?.maxN ?? 0, data.min_cases ?? 0));
  AXES.forEach((a, d) => {
    for (const end of ['min', 'max']) {
      const input = $(`clip-${a}-${end}`);
      input.min = String(snapDown(glandBox.min[d]));
      input.max = String(snapUp(glandBox.max[d]));
    }
  });
  $('field-controls').hidden = !field;
  $('clip-controls').hidden = !(field || layers.capsule || layers.isosurfaces);
  $('capsule-controls').hidden = !layers.capsule;
  $('legend').hidden = !field || !data.probability_range;
  addLayerToggles();
  bindInputs();
}

function addLayerToggles() {
  for (const spec of data.layers ?? []) {
    if (!layers[spec.id]) continue;
    const label = element('label', undefined, 'check');
    const input = element('input');
    input.type = 'checkbox';
    input.id = `layer-${spec.id}`;
    input.addEventListener('change', () => {
      state.layers[spec.id] = input.checked;
      applyState();
    });
    label.append(input, ` ${spec.label ?? spec.id}`);
    $('layer-toggles').append(label);
  }
}

function bindInputs() {
  const bindNumber = (id, apply) => $(id).addEventListener('input', (event) => {
    apply(Number(event.target.value));
    applyState();
  });
  bindNumber('threshold', (v) => { state.threshold = v; });
  bindNumber('coverage', (v) => { state.coverage = v; });
  bindNumber('opacity', (v) => { state.opacity = v; });
  for (const a of AXES) {
    bindNumber(`clip-${a}-min`, (v) => {
      state.clip[a] = [v, Math.max(v, state.clip[a][1])];
      $(`clip-${a}-max`).value = String(state.clip[a][1]);
    });
    bindNumber(`clip-${a}-max`, (v) => {
      state.clip[a] = [Math.min(v, state.clip[a][0]), v];
      $(`clip-${a}-min`).value = String(state.clip[a][0]);
    });
  }
  $('cmap').addEventListener('change', (event) => {
    state.cmap = event.target.value;
    applyState();
  });
  $('capsule-colour').addEventListener('change', (event) => {
    state.capsuleColour = event.target.checked;
    applyState();
  });
  for (const button of document.querySelectorAll('[data-preset]')) {
    button.addEventListener('click', () => setPreset(button.dataset.preset));
  }
  $('screenshot').addEventListener('click', saveScreenshot);
  $('reset').addEventListener('click', () => {
    pinned = null;
    setState(defaultState());
    setPreset('anterior');
  });
  const canvas = renderer.domElement;
  canvas.addEventListener('keydown', onKey);
  canvas.addEventListener('pointermove', onPointerMove);
  canvas.addEventListener('pointerdown', (event) => { downAt = [event.clientX, event.clientY]; });
  canvas.addEventListener('pointerup', onPointerUp);
  canvas.addEventListener('pointerleave', () => showPick(pinned));
  window.addEventListener('hashchange', () => { if (location.hash !== lastHash) readHash(); });
  new ResizeObserver(requestRender).observe($('view'));
}

// Any state (defaults, a pasted hash) goes through the inputs, whose min/max/step clamp it.
function setState(next) {
  Object.assign(state, structuredClone(next));
  const mirror = (id, value) => {
    $(id).value = String(value);
    return Number($(id).value);
  };
  state.threshold = mirror('threshold', state.threshold);
  state.coverage = mirror('coverage', state.coverage);
  state.opacity = mirror('opacity', state.opacity);
  $('cmap').value = colourMaps[state.cmap] ? state.cmap : DEFAULT_CMAP;
  state.cmap = $('cmap').value;
  state.capsuleColour = Boolean(state.capsuleColour);
  $('capsule-colour').checked = state.capsuleColour;
  for (const a of AXES) {
    const [lo, hi] = state.clip[a].map(Number).sort((p, q) => p - q);
    state.clip[a] = [mirror(`clip-${a}-min`, lo), mirror(`clip-${a}-max`, hi)];
  }
  for (const id of Object.keys(layers)) {
    state.layers[id] = Boolean(state.layers[id]);
    $(`layer-${id}`).checked = state.layers[id];
  }
  applyState();
}

// ---- camera ------------------------------------------------------------------------------

// World box of the visible layers (the gland's when none is visible): what presets frame.
function visibleBox() {
  const box = new THREE.Box3();
  for (const [id, root] of Object.entries(layers)) if (state.layers[id]) box.expandByObject(root);
  if (box.isEmpty()) box.setFromCenterAndSize(glandCentre(), new THREE.Vector3(...glandExtent()));
  return box;
}

function setPreset(name) {
  const direction = new THREE.Vector3(...PRESETS[name]).normalize();
  const box = visibleBox();
  const size = box.getSize(new THREE.Vector3());
  const centre = box.getCenter(new THREE.Vector3());
  const vertical = THREE.MathUtils.degToRad(camera.fov) / 2;
  const horizontal = Math.atan(Math.tan(vertical) * camera.aspect);
  const radius = 0.55 * Math.max(size.x, size.y, size.z);
  const distance = radius / Math.tan(Math.min(vertical, horizontal)) + radius;
  controls.target.copy(centre);
  camera.position.copy(centre).addScaledVector(direction, distance);
  camera.up.set(0, 1, 0);
  camera.lookAt(controls.target);
  controls.update();
  onViewChange();
}

function onKey(event) {
  const step = THREE.MathUtils.degToRad(5);
  const pan = 20;
  const actions = {
    ArrowLeft: () => (event.shiftKey ? controls.pan(pan, 0) : controls.rotateLeft(step)),
    ArrowRight: () => (event.shiftKey ? controls.pan(-pan, 0) : controls.rotateLeft(-step)),
    ArrowUp: () => (event.shiftKey ? controls.pan(0, pan) : controls.rotateUp(step)),
    ArrowDown: () => (event.shiftKey ? controls.pan(0, -pan) : controls.rotateUp(-step)),
    // OrbitControls' dollyOut moves the camera closer (zooms in).
    '+': () => controls.dollyOut(1.1), '=': () => controls.dollyOut(1.1),
    '-': () => controls.dollyIn(1.1), _: () => controls.dollyIn(1.1),
  };
  if (event.key === 'Escape') {
    pinned = null;
    showPick(null);
  } else if (PRESET_KEYS[event.key]) setPreset(PRESET_KEYS[event.key]);
  else if (actions[event.key]) actions[event.key]();
  else return;
  event.preventDefault();
}

function onViewChange() {
  requestRender();
  scheduleHash();
}

// ---- picking -----------------------------------------------------------------------------

const raycaster = new THREE.Raycaster();
let downAt = null;
let pendingPointer = null;

function pickAt(clientX, clientY) {
  const rect = renderer.domElement.getBoundingClientRect();
  const ndc = new THREE.Vector2(((clientX - rect.left) / rect.width) * 2 - 1,
    -((clientY - rect.top) / rect.height) * 2 + 1);
  raycaster.setFromCamera(ndc, camera);
  raycaster.params.Points.threshold = 0.6 * (field?.spacing ?? data.field_spacing_mm ?? 1);
  const candidates = [];
  if (field && state.layers.field) {
    const hit = raycaster.intersectObject(field.points, false).find((h) => isShown(h.index));
    if (hit) candidates.push({ kind: 'field', index: hit.index, distance: hit.distance });
  }
  const published = layers.published_points && findPoints(layers.published_points);
  if (published && state.layers.published_points) {
    const hit = raycaster.intersectObject(published, false)[0];
    if (hit) {
      candidates.push({ kind: 'published', published, index: hit.index, distance: hit.distance });
    }
  }
  candidates.sort((a, b) => a.distance - b.distance);
  return candidates[0] ?? null;
}

function pickVisible(pick) {
  if (pick.kind === 'field') return Boolean(state.layers.field) && isShown(pick.index);
  return Boolean(state.layers.published_points);
}

function onPointerMove(event) {
  if (event.buttons) return;
  const first = pendingPointer === null;
  pendingPointer = [event.clientX, event.clientY];
  if (!first) return;
  requestAnimationFrame(() => {
    const pick = pickAt(...pendingPointer);
    pendingPointer = null;
    showPick(pick ?? pinned);
  });
}

function onPointerUp(event) {
  if (!downAt || Math.hypot(event.clientX - downAt[0], event.clientY - downAt[1]) > 4) return;
  pinned = pickAt(event.clientX, event.clientY);
  showPick(pinned);
}

function pickPosition({ kind, index, published }) {
  if (kind === 'field') return Array.from(field.atlas.subarray(3 * index, 3 * index + 3));
  const position = published.geometry.getAttribute('position');
  return worldToAtlas(new THREE.Vector3().fromBufferAttribute(position, index)
    .applyMatrix4(published.matrixWorld));
}

const fmtPoint = ([x, y, z]) => `(${fmtMm(x)}, ${fmtMm(y)}, ${fmtMm(z)}) mm`;

function describePosition([x, y, z]) {
  const side = (v, neg, pos) => `${Math.abs(v).toFixed(1)} mm ${v < 0 ? neg : pos}`;
  const sides = [side(x, 'right', 'left'), side(y, 'anterior', 'posterior'),
    side(z, 'inferior', 'superior')];
  return [
    ['Position', sides.join(', ')],
    ['Atlas (x, y, z)', `${fmtPoint([x, y, z])}, LPS: +x left, +y posterior, +z superior`],
  ];
}

function regionName(code) {
  if (data.region_names?.[String(code)]) return data.region_names[String(code)];
  return code === 0 ? 'outside the gland' : `label ${code}`;
}

function showPick(pick) {
  const readout = $('readout');
  if (!pick) {
    readout.hidden = true;
    if (marker.visible) { marker.visible = false; requestRender(); }
    return;
  }
  const position = pickPosition(pick);
  let title;
  let rows;
  if (pick.kind === 'field') {
    const i = pick.index;
    const ci = field.ci ? `${fmtP(field.ci.getX(i))} to ${fmtP(field.ci.getY(i))}`
      : 'not available';
    title = `LLNM probability ${fmtP(field.prob[i])} (${(100 * field.prob[i]).toFixed(1)} %)`;
    rows = [
      ['95 % CI', ci],
      ['Coverage', `${fmtCount(field.n[i])} nodules`],
      ['Region', regionName(Math.round(field.region?.[i] ?? 0))],
      ...describePosition(position),
    ];
  } else {
    title = 'Published point';
    rows = [['Value', 'colour only; the published colour scale has no numbers'],
      ['Position', `${fmtPoint(position)}: published units rescaled to the atlas width, `
        + 'placed beside it']];
  }
  const list = element('dl');
  for (const [term, value] of rows) list.append(element('dt', term), element('dd', value));
  const isPinned = pinned && pick.kind === pinned.kind && pick.index === pinned.index;
  const hint = element('p', isPinned ? 'Pinned: click elsewhere or press Escape to release.'
    : 'Click to pin.', 'hint');
  readout.replaceChildren(element('p', title, 'readout-title'), list, hint);
  readout.hidden = false;
  marker.position.copy(atlasToWorld(...position));
  marker.visible = true;
  requestRender();
}

// ---- overlays: orientation letters and scale bar -------------------------------------------

function createOrientationLabels() {
  for (const [letter, name] of ORIENTATION) {
    const label = element('span', letter, 'orientation-label');
    label.title = name;
    $('orientation').append(label);
  }
  if (!layers.published_points) return;
  const spec = data.layers.find((layer) => layer.id === 'published_points');
  const box = new THREE.Box3().setFromObject(layers.published_points);
  const anchor = box.getCenter(new THREE.Vector3()).setY(box.max.y);
  const node = element('span', `${spec.label ?? 'Published points'} (colour only)`, 'layer-label');
  $('orientation').append(node);
  publishedTag = { anchor, node };
}

// Writes only changes, so a render loop that does not move the camera leaves the DOM alone.
const written = new WeakMap();
function setStyle(node, property, value) {
  const last = written.get(node) ?? {};
  if (last[property] === value) return;
  node.style[property] = value;
  written.set(node, { ...last, [property]: value });
}

function updateOverlays(width, height) {
  const centre = glandCentre();
  const half = glandExtent().map((extent) => extent / 2 + 0.08 * glandSize() + 2);
  const toCamera = camera.position.clone().sub(centre).normalize();
  const labels = $('orientation').children;
  ORIENTATION.forEach(([, , dir], i) => {
    const offset = atlasToWorld(...dir.map((s, d) => s * half[d]));
    const facing = Math.abs(offset.clone().normalize().dot(toCamera));
    const p = centre.clone().add(offset).project(camera);
    const label = labels[i];
    // A label along the line of sight would sit on top of the gland: hide it.
    label.hidden = facing > 0.8 || p.z > 1;
    const [x, y] = [((p.x + 1) / 2) * width, ((1 - p.y) / 2) * height];
    const at = `translate(${x.toFixed(1)}px, ${y.toFixed(1)}px) translate(-50%, -50%)`;
    setStyle(label, 'transform', at);
  });
  if (publishedTag) {
    const p = publishedTag.anchor.clone().project(camera);
    publishedTag.node.hidden = !state.layers.published_points || p.z > 1;
    const [x, y] = [((p.x + 1) / 2) * width, ((1 - p.y) / 2) * height];
    const at = `translate(${x.toFixed(1)}px, ${y.toFixed(1)}px) translate(-50%, -150%)`;
    setStyle(publishedTag.node, 'transform', at);
  }
  const distance = camera.position.distanceTo(controls.target);
  const pxPerMm = height / (2 * distance * Math.tan(THREE.MathUtils.degToRad(camera.fov) / 2));
  const length = NICE_LENGTHS_MM.filter((mm) => mm * pxPerMm <= 140).pop() ?? NICE_LENGTHS_MM[0];
  setStyle($('scalebar-bar'), 'width', `${(length * pxPerMm).toFixed(1)}px`);
  $('scalebar-label').textContent = `${length} mm`;
}

// ---- rendering ---------------------------------------------------------------------------

function resizeIfNeeded() {
  const host = $('view');
  const width = host.clientWidth;
  const height = host.clientHeight;
  const canvas = renderer.domElement;
  if (canvas.style.width !== `${width}px` || canvas.style.height !== `${height}px`) {
    renderer.setSize(width, height);
    camera.aspect = width / Math.max(height, 1);
    camera.updateProjectionMatrix();
  }
  if (field) {
    const buffer = renderer.getDrawingBufferSize(new THREE.Vector2());
    field.points.material.uniforms.uViewportHeight.value = buffer.y;
  }
  return [width, height];
}

function render() {
  const [width, height] = resizeIfNeeded();
  updateOverlays(width, height);
  renderer.render(scene, camera);
  if (api.firstFrameMs === null) api.firstFrameMs = performance.now();
}

function requestRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

// ---- URL hash ----------------------------------------------------------------------------

let lastHash = '';

function viewState() {
  const round = (v) => Math.round(v * 100) / 100;
  return {
    camera: [...camera.position.toArray(), ...controls.target.toArray()].map(round),
    threshold: Number(state.threshold.toFixed(3)), coverage: state.coverage, cmap: state.cmap,
    opacity: state.opacity, capsuleColour: state.capsuleColour,
    clip: AXES.flatMap((a) => state.clip[a]),
    layers: Object.keys(layers).filter((id) => state.layers[id]).sort(),
  };
}

function scheduleHash() {
  clearTimeout(hashTimer);
  hashTimer = setTimeout(writeHash, 250);
}

function writeHash() {
  const v = viewState();
  const params = new URLSearchParams({
    cam: v.camera.join(','), thr: v.threshold.toFixed(3), cov: String(v.coverage), cmap: v.cmap,
    op: String(v.opacity), cc: v.capsuleColour ? '1' : '0', clip: v.clip.join(','),
    layers: v.layers.join(','),
  });
  lastHash = `#${params}`;
  history.replaceState(null, '', lastHash);
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const numbers = (key, n) => {
    if (!params.get(key)) return null;
    const values = params.get(key).split(',').map(Number);
    return values.length === n && values.every(Number.isFinite) ? values : null;
  };
  const next = structuredClone(state);
  const scalar = (key) => numbers(key, 1)?.[0];
  next.threshold = scalar('thr') ?? next.threshold;
  next.coverage = scalar('cov') ?? next.coverage;
  next.opacity = scalar('op') ?? next.opacity;
  next.cmap = params.get('cmap') ?? next.cmap;
  if (params.has('cc')) next.capsuleColour = params.get('cc') === '1';
  const clip = numbers('clip', 6);
  if (clip) AXES.forEach((a, d) => { next.clip[a] = clip.slice(2 * d, 2 * d + 2); });
  if (params.has('layers')) {
    const shown = new Set(params.get('layers').split(','));
    for (const id of Object.keys(layers)) next.layers[id] = shown.has(id);
  }
  setState(next);
  const cam = numbers('cam', 6);
  if (cam) {
    camera.position.fromArray(cam);
    controls.target.fromArray(cam, 3);
    controls.update();
    onViewChange();
  }
}

// ---- screenshot --------------------------------------------------------------------------

function saveScreenshot() {
  render();
  const source = renderer.domElement;
  const out = document.createElement('canvas');
  out.width = source.width;
  out.height = source.height;
  const ctx = out.getContext('2d');
  // Drawn in the same task as render(), while the drawing buffer still holds the frame.
  ctx.drawImage(source, 0, 0);
  ctx.scale(source.width / source.clientWidth, source.height / source.clientHeight);
  drawOverlays(ctx, source.getBoundingClientRect());
  out.toBlob((blob) => {
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = 'llnm3d-view.png';
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, 'image/png');
}

function drawOverlays(ctx, frame) {
  const offset = (node) => {
    const r = node.getBoundingClientRect();
    return [r.left - frame.left, r.top - frame.top, r.width, r.height];
  };
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'center';
  ctx.fillStyle = '#ffffff';
  for (const label of $('orientation').children) {
    if (label.hidden) continue;
    const style = getComputedStyle(label);
    ctx.font = `${style.fontWeight} ${style.fontSize} system-ui, sans-serif`;
    const [x, y, w, h] = offset(label);
    ctx.fillText(label.textContent, x + w / 2, y + h / 2);
  }
  const [sx, sy, , sh] = offset($('scalebar-bar'));
  ctx.fillRect(sx, sy, $('scalebar-bar').offsetWidth, Math.max(sh, 3));
  ctx.font = '13px system-ui, sans-serif';
  ctx.textAlign = 'left';
  ctx.fillText($('scalebar-label').textContent, sx, sy - 10);
  if ($('legend').hidden) return;
  const [bx, by, bw, bh] = offset($('legend-bar'));
  const gradient = ctx.createLinearGradient(bx, 0, bx + bw, 0);
  for (let t = 0; t <= 1; t += 0.125) gradient.addColorStop(t, cssColour(colourAt(state.cmap, t)));
  ctx.fillStyle = gradient;
  ctx.fillRect(bx, by, bw, bh);
  ctx.fillStyle = '#ffffff';
  ctx.fillText($('legend-title').textContent, bx, by - 12);
  ctx.fillText($('legend-min').textContent, bx, by + bh + 10);
  ctx.textAlign = 'right';
  ctx.fillText($('legend-max').textContent, bx + bw, by + bh + 10);
}

// ---- start -------------------------------------------------------------------------------

async function loadData() {
  const response = await fetch('data.json');
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

async function main() {
  try {
    data = await loadData();
  } catch (error) {
    showMessage(`Could not load data.json (${error.message}). Serve this folder over http(s); `
      + 'opening index.html from disk does not work.');
    markReady();
    return;
  }
  fillPage();
  if (!webglAvailable()) {
    showMessage('This browser has WebGL 2 switched off or does not support it, so the 3D view '
      + 'cannot be drawn. The tables still apply. Try a current Chrome, Edge, Firefox or Safari '
      + 'with hardware acceleration enabled.');
    markReady();
    return;
  }
  createScene();
  const loading = element('p', 'Loading 3D data\u2026', 'message loading');
  $('messages').append(loading);
  const loader = new GLTFLoader();
  const specs = data.layers ?? [];
  const results = await Promise.allSettled(specs.map((spec) => loadLayer(loader, spec)));
  loading.remove();
  results.forEach((result, i) => {
    if (result.status === 'rejected') {
      const reason = result.reason?.message ?? result.reason;
      showMessage(`Could not load ${specs[i].label ?? specs[i].id} (${specs[i].file}): ${reason}`);
    }
  });
  if (data.points === 0) {
    showMessage(`No voxel has at least ${fmtCount(data.min_cases)} nodules, so the probability `
      + 'field is empty; the other layers are shown.');
  }
  computeBounds();
  addMarker();
  createOrientationLabels();
  setupControls();
  setState(defaultState());
  resizeIfNeeded();
  setPreset('anterior');
  if (location.hash.length > 1) readHash();
  render();
  markReady();
}

main().catch((error) => {
  showMessage(`The viewer stopped: ${error.message}`);
  markReady();
});
