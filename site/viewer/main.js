// llnm3d static viewer (docs/site-format.md): start-up, the side panel's controls, the URL
// hash, and the links between the 3D view, the slice panels and the readout.
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';
import {
  applyScale, currentMap, divergingAllowed, fillColourMapOptions, hasColourMap, loadColourMaps,
} from './colour.js';
import {
  applyFieldState, countShown, FILTERS, filterAvailable, voxelPosition,
} from './field.js';
import { showReadout } from './readout.js';
import {
  addLandmarks, addMarker, applySceneState, computeBounds, createOrientationLabels, createScene,
  loadLayer, onKey, pickAt, render, requestRender, resizeIfNeeded, saveScreenshot, setCamera,
  setPreset, showMarker, webglAvailable,
} from './scene.js';
import { clampToGrid, drawSlices, loadLabels, setupSlices, slicePoint } from './slices.js';
import { app, DEFAULT_CMAP, DEFAULT_OPACITY, state } from './state.js';
import { $, AXES, element, fmtCount, fmtMm } from './util.js';
import { fillPage, showMessage } from './tables.js';

let layerSpecs = [];
let hover = null;  // what the pointer is over in the 3D view, or null
// The readout shows the cursor once the user placed it (the default cursor only aims the slices).
let cursorPlaced = false;
let markReady;
const api = {
  ready: new Promise((resolve) => { markReady = resolve; }),
  layers: app.layers, errors: app.errors, firstFrameMs: null,
  get renderer() { return app.renderer; },
  get scene() { return app.scene; },
  get camera() { return app.camera; },
  get controls() { return app.controls; },
  get fieldPoints() { return app.field?.points ?? null; },
  state,
  shownCount: () => (app.field ? countShown(app.field) : 0),
  render: () => render(),
  viewState: () => viewState(),
  drawSlices: () => drawSlices(),
  slicePoint: (id, position) => slicePoint(id, position),
  setCursor: (position) => setCursor(position),
  fieldSpacing: () => app.field?.spacing ?? null,
  drawnCount: () => app.field?.drawn ?? 0,
  markerPosition: () => (app.marker.visible ? app.marker.position.toArray() : null),
};
window.llnm3d = api;

// ---- state -> page -----------------------------------------------------------------------

const snapDown = (v) => Math.floor(v * 2 - 1e-6) / 2;
const snapUp = (v) => Math.ceil(v * 2 + 1e-6) / 2;

function defaultState() {
  const clip = {};
  AXES.forEach((a, d) => {
    clip[a] = [snapDown(app.glandBox.min[d]), snapUp(app.glandBox.max[d])];
  });
  const visible = {};
  for (const spec of layerSpecs) if (app.layers[spec.id]) visible[spec.id] = Boolean(spec.visible);
  const map = app.field?.mapSpecs[0].id ?? 'probability';
  return {
    map, scale: 'range', filter: 'none', threshold: app.field?.ranges[map][0] ?? 0,
    coverage: app.data.min_cases ?? 0, cmap: DEFAULT_CMAP, opacity: DEFAULT_OPACITY,
    capsuleColour: false, clip, layers: visible, cursor: defaultCursor(),
  };
}

// The most probable voxel, so the slices open on the map's peak.
function defaultCursor() {
  const { field } = app;
  if (!field || !field.count || !app.labels) return null;
  let best = 0;
  for (let i = 1; i < field.count; i += 1) {
    if (field.maps.probability[i] > field.maps.probability[best]) best = i;
  }
  return clampToGrid(voxelPosition(field, best));
}

function applyState() {
  const { field } = app;
  if (field) {
    applyFieldState(field);
    applyScale();
    $('shown-count').textContent = `${fmtCount(field.shownCount)} of ${fmtCount(field.count)} `
      + 'voxels shown';
  }
  applySceneState();
  AXES.forEach((a) => {
    const [lo, hi] = state.clip[a];
    $(`clip-${a}-value`).textContent = `${fmtMm(lo)} to ${fmtMm(hi)} mm`;
  });
  const spec = currentMap();
  $('threshold-value').textContent = spec?.id === 'coverage' ? String(state.threshold)
    : Number(state.threshold).toFixed(3);
  $('coverage-value').textContent = String(state.coverage);
  $('opacity-value').textContent = state.opacity.toFixed(2);
  $('scale').disabled = !divergingAllowed();
  showPick();
  drawSlices();
  scheduleHash();
}

// The readout and the 3D marker: what the pointer is over, else the cursor (pinned).
function showPick() {
  const pick = hover ?? (state.cursor && cursorPlaced
    ? { kind: 'cursor', position: state.cursor } : null);
  const position = pick && (pick.kind === 'field' ? voxelPosition(app.field, pick.index)
    : pick.position);
  const atCursor = cursorPlaced && position?.every((v, d) => Math.abs(v - state.cursor[d]) < 1e-3);
  showReadout(pick, !hover || atCursor);
  showMarker(position);
}

function setCursor(position) {
  cursorPlaced = Boolean(position);
  state.cursor = position && app.labels ? clampToGrid(position) : position;
  hover = null;
  showPick();
  drawSlices();
  scheduleHash();
}

// ---- controls ----------------------------------------------------------------------------

// The threshold slider follows the displayed map's range.
function setThresholdRange() {
  const [lo, hi] = app.field.ranges[state.map];
  const threshold = $('threshold');
  const coverage = state.map === 'coverage';
  const step = coverage ? 1 : (hi - lo > 5 ? 0.05 : 0.005);
  threshold.step = String(step);
  threshold.min = String(Math.floor(lo / step) * step);
  threshold.max = String(Math.ceil(hi / step) * step);
  $('threshold-label').textContent = `Show ${currentMap().label} \u2265`;
}

function setupControls() {
  const { field } = app;
  if (field) {
    for (const spec of field.mapSpecs) {
      const option = element('option', spec.label);
      option.value = spec.id;
      $('map').append(option);
    }
    for (const filter of FILTERS) {
      if (!filterAvailable(field, filter)) continue;
      const option = element('option', filter.label);
      option.value = filter.id;
      $('filter').append(option);
    }
    const coverage = $('coverage');
    coverage.min = String(app.data.min_cases ?? 0);
    coverage.max = String(Math.max(field.maxN, app.data.min_cases ?? 0));
  }
  fillColourMapOptions($('cmap'));
  AXES.forEach((a, d) => {
    for (const end of ['min', 'max']) {
      const input = $(`clip-${a}-${end}`);
      input.min = String(snapDown(app.glandBox.min[d]));
      input.max = String(snapUp(app.glandBox.max[d]));
    }
  });
  $('field-controls').hidden = !field;
  $('clip-controls').hidden = !(field || app.layers.capsule || app.layers.isosurfaces);
  $('capsule-controls').hidden = !app.layers.capsule;
  $('legend').hidden = !field;
  addLayerToggles();
  bindInputs();
}

function addLayerToggles() {
  for (const spec of layerSpecs) {
    if (!app.layers[spec.id]) continue;
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
  const bindChoice = (id, apply) => $(id).addEventListener('change', (event) => {
    apply(event.target.value);
    applyState();
  });
  bindChoice('map', (v) => {
    state.map = v;
    setThresholdRange();
    state.threshold = Number($('threshold').min);
    $('threshold').value = String(state.threshold);
    if (!divergingAllowed()) state.scale = 'range';
    $('scale').value = state.scale;
  });
  bindChoice('scale', (v) => { state.scale = v; });
  bindChoice('filter', (v) => { state.filter = v; });
  bindChoice('cmap', (v) => { state.cmap = v; });
  $('capsule-colour').addEventListener('change', (event) => {
    state.capsuleColour = event.target.checked;
    applyState();
  });
  $('show-slices').addEventListener('change', (event) => {
    $('slices').hidden = !event.target.checked;
    resizeIfNeeded();
    requestRender();
    drawSlices();
  });
  for (const button of document.querySelectorAll('[data-preset]')) {
    button.addEventListener('click', () => setPreset(button.dataset.preset));
  }
  $('screenshot').addEventListener('click', saveScreenshot);
  $('reset').addEventListener('click', () => {
    hover = null;
    cursorPlaced = false;
    setState(defaultState());
    setPreset('anterior');
  });
  const canvas = app.renderer.domElement;
  let downAt = null;
  let pendingPointer = null;
  canvas.addEventListener('keydown', (event) => onKey(event, () => setCursor(null)));
  canvas.addEventListener('pointermove', (event) => {
    if (event.buttons) return;
    const first = pendingPointer === null;
    pendingPointer = [event.clientX, event.clientY];
    if (!first) return;
    requestAnimationFrame(() => {
      hover = pickAt(...pendingPointer);
      pendingPointer = null;
      showPick();
    });
  });
  canvas.addEventListener('pointerdown', (event) => { downAt = [event.clientX, event.clientY]; });
  canvas.addEventListener('pointerup', (event) => {
    if (!downAt || Math.hypot(event.clientX - downAt[0], event.clientY - downAt[1]) > 4) return;
    const pick = pickAt(event.clientX, event.clientY);
    if (pick?.kind === 'field') setCursor(voxelPosition(app.field, pick.index));
    else setCursor(pick ? pick.position : null);
  });
  canvas.addEventListener('pointerleave', () => {
    hover = null;
    showPick();
  });
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
  const choose = (id, value, fallback) => {
    const allowed = [...$(id).options].some((o) => o.value === value);
    $(id).value = allowed ? value : fallback;
    return $(id).value;
  };
  if (app.field) {
    state.map = choose('map', state.map, app.field.mapSpecs[0].id);
    setThresholdRange();
    state.filter = choose('filter', state.filter, 'none');
  }
  state.scale = divergingAllowed() ? choose('scale', state.scale, 'range') : 'range';
  $('scale').value = state.scale;
  state.threshold = mirror('threshold', state.threshold);
  state.coverage = mirror('coverage', state.coverage);
  state.opacity = mirror('opacity', state.opacity);
  state.cmap = hasColourMap(state.cmap) ? state.cmap : DEFAULT_CMAP;
  $('cmap').value = state.cmap;
  state.capsuleColour = Boolean(state.capsuleColour);
  $('capsule-colour').checked = state.capsuleColour;
  for (const a of AXES) {
    const [lo, hi] = state.clip[a].map(Number).sort((p, q) => p - q);
    state.clip[a] = [mirror(`clip-${a}-min`, lo), mirror(`clip-${a}-max`, hi)];
  }
  for (const id of Object.keys(app.layers)) {
    state.layers[id] = Boolean(state.layers[id]);
    $(`layer-${id}`).checked = state.layers[id];
  }
  if (state.cursor && app.labels) state.cursor = clampToGrid(state.cursor);
  applyState();
}

// ---- URL hash ----------------------------------------------------------------------------

let lastHash = '';
let hashTimer = 0;

function viewState() {
  const round = (v) => Math.round(v * 100) / 100;
  const { camera, controls } = app;
  return {
    camera: [...camera.position.toArray(), ...controls.target.toArray(),
      ...camera.up.toArray()].map(round),
    map: state.map, scale: state.scale, filter: state.filter,
    threshold: Number(Number(state.threshold).toFixed(3)), coverage: state.coverage,
    cmap: state.cmap, opacity: state.opacity, capsuleColour: state.capsuleColour,
    clip: AXES.flatMap((a) => state.clip[a]),
    layers: Object.keys(app.layers).filter((id) => state.layers[id]).sort(),
    cursor: state.cursor ? state.cursor.map(round) : null,
  };
}

function scheduleHash() {
  clearTimeout(hashTimer);
  hashTimer = setTimeout(writeHash, 250);
}

function writeHash() {
  const v = viewState();
  const params = new URLSearchParams({
    cam: v.camera.join(','), map: v.map, scale: v.scale, filter: v.filter,
    thr: v.threshold.toFixed(3), cov: String(v.coverage), cmap: v.cmap, op: String(v.opacity),
    cc: v.capsuleColour ? '1' : '0', clip: v.clip.join(','), layers: v.layers.join(','),
  });
  if (v.cursor) params.set('cur', v.cursor.join(','));
  lastHash = `#${params}`;
  history.replaceState(null, '', lastHash);
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const numbers = (key, ...counts) => {
    if (!params.get(key)) return null;
    const values = params.get(key).split(',').map(Number);
    return counts.includes(values.length) && values.every(Number.isFinite) ? values : null;
  };
  const next = structuredClone(state);
  const scalar = (key) => numbers(key, 1)?.[0];
  for (const key of ['map', 'scale', 'filter', 'cmap']) next[key] = params.get(key) ?? next[key];
  next.threshold = scalar('thr') ?? next.threshold;
  next.coverage = scalar('cov') ?? next.coverage;
  next.opacity = scalar('op') ?? next.opacity;
  if (params.has('cc')) next.capsuleColour = params.get('cc') === '1';
  const clip = numbers('clip', 6);
  if (clip) AXES.forEach((a, d) => { next.clip[a] = clip.slice(2 * d, 2 * d + 2); });
  if (params.has('layers')) {
    const shown = new Set(params.get('layers').split(','));
    for (const id of Object.keys(app.layers)) next.layers[id] = shown.has(id);
  }
  const cursor = numbers('cur', 3);
  if (cursor) {
    next.cursor = cursor;
    cursorPlaced = true;
  }
  setState(next);
  const cam = numbers('cam', 6, 9);
  if (cam) setCamera(cam.slice(0, 3), cam.slice(3, 6), cam.length === 9 ? cam.slice(6) : [0, 1, 0]);
}

// ---- start -------------------------------------------------------------------------------

async function loadData() {
  const response = await fetch('data.json');
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

async function main() {
  try {
    app.data = await loadData();
  } catch (error) {
    showMessage(`Could not load data.json (${error.message}). Serve this folder over http(s); `
      + 'opening index.html from disk does not work.');
    markReady();
    return;
  }
  loadColourMaps(app.data);
  fillPage();
  if (!webglAvailable()) {
    showMessage('This browser has WebGL 2 switched off or does not support it, so the 3D view '
      + 'cannot be drawn. The tables still apply. Try a current Chrome, Edge, Firefox or Safari '
      + 'with hardware acceleration enabled.');
    markReady();
    return;
  }
  createScene(() => {
    requestRender();
    scheduleHash();
  });
  const loading = element('p', 'Loading 3D data\u2026', 'message loading');
  $('messages').append(loading);
  const loader = new GLTFLoader();
  layerSpecs = [...(app.data.layers ?? [])];
  const [results, labels] = await Promise.all([
    Promise.allSettled(layerSpecs.map((spec) => loadLayer(loader, spec))),
    app.data.slices ? loadLabels(app.data.slices).catch((error) => {
      showMessage(`Could not load the slice panels' atlas (${app.data.slices.labels}): `
        + `${error.message}`);
      return null;
    }) : null,
  ]);
  loading.remove();
  results.forEach((result, i) => {
    if (result.status === 'rejected') {
      const reason = result.reason?.message ?? result.reason;
      showMessage(`Could not load ${layerSpecs[i].label ?? layerSpecs[i].id} `
        + `(${layerSpecs[i].file}): ${reason}`);
    }
  });
  if (app.data.points === 0) {
    showMessage(`No voxel has at least ${fmtCount(app.data.min_cases)} nodules, so the `
      + 'probability field is empty; the other layers are shown.');
  }
  app.labels = labels;
  computeBounds();
  const landmarks = addLandmarks();
  if (landmarks) layerSpecs.push(landmarks);
  addMarker();
  createOrientationLabels();
  setupControls();
  if (app.labels && app.field) setupSlices(setCursor);
  $('slice-controls').hidden = !(app.labels && app.field);
  setState(defaultState());
  resizeIfNeeded();
  setPreset('anterior');
  if (location.hash.length > 1) readHash();
  render();
  api.firstFrameMs = performance.now();
  markReady();
}

main().catch((error) => {
  showMessage(`The viewer stopped: ${error.message}`);
  markReady();
});
