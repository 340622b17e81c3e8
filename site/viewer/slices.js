// Linked slice panels: transverse, coronal and longitudinal sections of the displayed map over
// the atlas regions, drawn on 2D canvases (one pixel per field voxel, scaled without
// smoothing), with a crosshair at the cursor that the 3D view shares. Orientation follows
// ultrasound: transverse with the patient's right on the image left and anterior at the top;
// longitudinal with cranial on the left and anterior at the top; coronal as seen from the front.
import { colourAt, fieldScale, scaleT } from './colour.js';
import { passesDisplay, voxelAt } from './field.js';
import { app, state } from './state.js';
import { $, AXES, element } from './util.js';

// Each panel: the atlas axis (0 x, 1 y, 2 z) and direction along its screen x and y, the axis
// it cuts, and the edge letters (left, right, top, bottom).
const PANELS = [
  { id: 'transverse', title: 'Transverse', u: [0, 1], v: [1, 1], cut: 2, edges: 'RLAP' },
  { id: 'coronal', title: 'Coronal', u: [0, 1], v: [2, -1], cut: 1, edges: 'RLSI' },
  { id: 'longitudinal', title: 'Longitudinal', u: [2, -1], v: [1, 1], cut: 0,
    edges: 'SIAP' },
];
const OUTSIDE = [29, 33, 39];
const GLAND = [150, 138, 134];
const EDGE = [95, 86, 84];
const CROSSHAIR = '#ff4f9a';
const LANDMARK = 'rgba(160, 205, 255, 0.9)';
// The panels are small and redrawn whole on every cursor move: drawn on the CPU, they need no
// round trip to the GPU process (which, in software WebGL, is busy with the 3D view).
const CANVAS_2D = { willReadFrequently: true };

let onCursor = () => {};
const panels = [];

// Decode the run-length coded labels (build.py: lengths as uint16, then the labels as bytes).
export async function loadLabels(spec) {
  const response = await fetch(spec.labels);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const buffer = await response.arrayBuffer();
  const lengths = new Uint16Array(buffer, 0, spec.runs);
  const values = new Uint8Array(buffer, 2 * spec.runs, spec.runs);
  const [nz, ny, nx] = spec.shape_zyx;
  const labels = new Uint8Array(nx * ny * nz);
  let at = 0;
  for (let r = 0; r < spec.runs; r += 1) {
    labels.fill(values[r], at, at + lengths[r]);
    at += lengths[r];
  }
  if (at !== labels.length) throw new Error(`labels.bin holds ${at} voxels, not ${labels.length}`);
  return { labels, dims: [nx, ny, nz], origin: spec.origin_mm, spacing: spec.spacing_mm };
}

// Atlas mm of the labels grid's first and last voxel centre along each axis.
const extent = (grid, d) => [grid.origin[d], grid.origin[d] + grid.spacing * (grid.dims[d] - 1)];

export function setupSlices(cursorChanged) {
  onCursor = cursorChanged;
  const host = $('slices');
  for (const spec of PANELS) {
    const canvas = element('canvas');
    canvas.id = `slice-${spec.id}`;
    canvas.tabIndex = 0;
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', `${spec.title} slice; click or drag to move the cursor, `
      + 'arrow keys move it one voxel, Page Up and Page Down change the slice');
    const caption = element('figcaption', spec.title);
    const position = element('span', '', 'slice-position');
    caption.append(' ', position);
    const figure = element('figure', undefined, 'slice');
    figure.append(caption, canvas);
    host.append(figure);
    const image = document.createElement('canvas');
    image.width = app.labels.dims[spec.u[0]];
    image.height = app.labels.dims[spec.v[0]];
    const panel = { spec, canvas, position, image, pixels: image.getContext('2d', CANVAS_2D)
      .createImageData(image.width, image.height) };
    panels.push(panel);
    bindPanel(panel);
  }
  host.hidden = false;
  new ResizeObserver(() => drawSlices()).observe(host);
}

// Where the image lands on the canvas (CSS px): uniform scale, centred.
function layout(panel) {
  const { canvas, image } = panel;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  const scale = Math.min(width / image.width, height / image.height);
  return { scale, x0: (width - scale * image.width) / 2, y0: (height - scale * image.height) / 2 };
}

// Atlas mm at image column a / row b (fractional), and back.
function pixelToAtlas(panel, a, b) {
  const grid = app.labels;
  const { u, v } = panel.spec;
  const position = [...state.cursor];
  const along = (axis, sign, t) => {
    const [lo, hi] = extent(grid, axis);
    return sign > 0 ? lo + t * grid.spacing : hi - t * grid.spacing;
  };
  position[u[0]] = along(u[0], u[1], a);
  position[v[0]] = along(v[0], v[1], b);
  return position;
}

function atlasToPixel(panel, position) {
  const grid = app.labels;
  const { u, v } = panel.spec;
  const to = (axis, sign) => {
    const [lo, hi] = extent(grid, axis);
    return (sign > 0 ? position[axis] - lo : hi - position[axis]) / grid.spacing;
  };
  return [to(u[0], u[1]), to(v[0], v[1])];
}

export function clampToGrid(position) {
  const grid = app.labels;
  return position.map((value, d) => {
    const [lo, hi] = extent(grid, d);
    const k = Math.round((Math.min(Math.max(value, lo), hi) - grid.origin[d]) / grid.spacing);
    return grid.origin[d] + k * grid.spacing;
  });
}

function bindPanel(panel) {
  const { canvas } = panel;
  let dragging = false;
  let queued = null;
  const moveTo = (event) => {
    const rect = canvas.getBoundingClientRect();
    const { scale, x0, y0 } = layout(panel);
    const a = Math.round((event.clientX - rect.left - x0) / scale - 0.5);
    const b = Math.round((event.clientY - rect.top - y0) / scale - 0.5);
    const first = queued === null;
    queued = clampToGrid(pixelToAtlas(panel, a, b));
    if (!first) return;
    // One cursor move per frame however fast the pointer events come.
    requestAnimationFrame(() => {
      const next = queued;
      queued = null;
      onCursor(next);
    });
  };
  canvas.addEventListener('pointerdown', (event) => {
    dragging = true;
    canvas.setPointerCapture(event.pointerId);
    moveTo(event);
  });
  canvas.addEventListener('pointermove', (event) => { if (dragging) moveTo(event); });
  canvas.addEventListener('pointerup', () => { dragging = false; });
  canvas.addEventListener('keydown', (event) => {
    const { u, v, cut } = panel.spec;
    const steps = {
      ArrowLeft: [u[0], -u[1]], ArrowRight: [u[0], u[1]], ArrowUp: [v[0], -v[1]],
      ArrowDown: [v[0], v[1]], PageUp: [cut, 1], PageDown: [cut, -1],
    };
    if (!steps[event.key] || !state.cursor) return;
    const [axis, sign] = steps[event.key];
    const next = [...state.cursor];
    next[axis] += sign * app.labels.spacing;
    onCursor(clampToGrid(next));
    event.preventDefault();
  });
}

function labelAt(grid, i, j, k) {
  return grid.labels[(k * grid.dims[1] + j) * grid.dims[0] + i];
}

// Whether the next voxel along an in-plane axis is in another region of the gland.
function regionEdge(grid, ijk, axis, label) {
  if (ijk[axis] + 1 >= grid.dims[axis]) return false;
  ijk[axis] += 1;
  const next = labelAt(grid, ...ijk);
  ijk[axis] -= 1;
  return next !== 0 && next !== label;
}

// One panel's voxels: the shown map in colour over the gland (grey, region edges darker),
// the neck around it dark.
function paint(panel, scale) {
  const grid = app.labels;
  const { field } = app;
  const { u, v, cut } = panel.spec;
  const { width, height } = panel.image;
  const data = panel.pixels.data;
  const cutIndex = Math.round((state.cursor[cut] - grid.origin[cut]) / grid.spacing);
  const ijk = [0, 0, 0];
  const position = [0, 0, 0];
  ijk[cut] = cutIndex;
  position[cut] = state.cursor[cut];
  for (let b = 0; b < height; b += 1) {
    ijk[v[0]] = v[1] > 0 ? b : grid.dims[v[0]] - 1 - b;
    for (let a = 0; a < width; a += 1) {
      ijk[u[0]] = u[1] > 0 ? a : grid.dims[u[0]] - 1 - a;
      const label = labelAt(grid, ...ijk);
      let rgb = OUTSIDE;
      if (label) rgb = regionEdge(grid, ijk, u[0], label) || regionEdge(grid, ijk, v[0], label)
        ? EDGE : GLAND;
      if (field) {
        for (let d = 0; d < 3; d += 1) position[d] = grid.origin[d] + ijk[d] * grid.spacing;
        const i = voxelAt(field, position);
        if (i >= 0 && passesDisplay(field, i)) {
          rgb = colourAt(scale.cmap, scaleT(scale, field.maps[state.map][i]));
        }
      }
      const at = 4 * (b * width + a);
      data[at] = rgb[0];
      data[at + 1] = rgb[1];
      data[at + 2] = rgb[2];
      data[at + 3] = 255;
    }
  }
  panel.image.getContext('2d', CANVAS_2D).putImageData(panel.pixels, 0, 0);
}

// Trachea and carotids are vertical cylinders (atlas.json landmarks): circles in the
// transverse panel, their walls where the other panels cut them.
function drawLandmarks(ctx, panel, toCanvas) {
  const { cut } = panel.spec;
  ctx.strokeStyle = LANDMARK;
  ctx.fillStyle = LANDMARK;
  ctx.lineWidth = 1.5;
  ctx.setLineDash([5, 4]);
  ctx.font = '11px system-ui, sans-serif';
  const [zLo, zHi] = extent(app.labels, 2);
  for (const [name, mark] of Object.entries(app.data.landmarks ?? {})) {
    const [cx, cy] = mark.centre_xy_mm;
    const r = mark.radius_mm;
    const label = name.startsWith('carotid') ? 'CCA' : name;
    ctx.beginPath();
    if (cut === 2) {
      const [px, py] = toCanvas([cx, cy, state.cursor[2]]);
      const [ex] = toCanvas([cx + r, cy, state.cursor[2]]);
      ctx.arc(px, py, Math.abs(ex - px), 0, 2 * Math.PI);
      ctx.stroke();
      ctx.fillText(label, px - ctx.measureText(label).width / 2, py + 4);
      continue;
    }
    const offset = state.cursor[cut === 1 ? 1 : 0] - (cut === 1 ? cy : cx);
    if (Math.abs(offset) >= r) continue;
    const half = Math.sqrt(r * r - offset * offset);
    const centre = cut === 1 ? cx : cy;
    const axis = cut === 1 ? 0 : 1;
    for (const wall of [centre - half, centre + half]) {
      const p = [...state.cursor];
      p[axis] = wall;
      p[2] = zLo;
      const from = toCanvas(p);
      p[2] = zHi;
      const to = toCanvas(p);
      ctx.moveTo(...from);
      ctx.lineTo(...to);
    }
    ctx.stroke();
    const p = [...state.cursor];
    p[axis] = centre;
    p[2] = zLo;
    const [tx, ty] = toCanvas(p);
    ctx.fillText(label, tx - ctx.measureText(label).width / 2, ty - 6);
  }
  ctx.setLineDash([]);
}

function drawPanel(panel, scale) {
  const { canvas, image, spec } = panel;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  paint(panel, scale);
  const ctx = canvas.getContext('2d', CANVAS_2D);
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = `rgb(${OUTSIDE.join(',')})`;
  ctx.fillRect(0, 0, width, height);
  const { scale: s, x0, y0 } = layout(panel);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, x0, y0, s * image.width, s * image.height);
  const toCanvas = (position) => {
    const [a, b] = atlasToPixel(panel, position);
    return [x0 + s * (a + 0.5), y0 + s * (b + 0.5)];
  };
  drawLandmarks(ctx, panel, toCanvas);
  const [cx, cy] = toCanvas(state.cursor);
  ctx.strokeStyle = CROSSHAIR;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(x0, cy);
  ctx.lineTo(x0 + s * image.width, cy);
  ctx.moveTo(cx, y0);
  ctx.lineTo(cx, y0 + s * image.height);
  ctx.stroke();
  ctx.fillStyle = '#f2f4f7';
  ctx.font = 'bold 13px system-ui, sans-serif';
  const [left, right, top, bottom] = spec.edges;
  ctx.textBaseline = 'middle';
  ctx.fillText(left, x0 + 4, y0 + (s * image.height) / 2);
  ctx.fillText(right, x0 + s * image.width - 13, y0 + (s * image.height) / 2);
  ctx.fillText(top, x0 + (s * image.width) / 2 - 4, y0 + 9);
  ctx.fillText(bottom, x0 + (s * image.width) / 2 - 4, y0 + s * image.height - 9);
  const axis = AXES[spec.cut];
  const value = state.cursor[spec.cut];
  panel.position.textContent = `${axis} = ${value < 0 ? '\u2212' : ''}${Math.abs(value).toFixed(1)} mm`;
}

// Redraw every panel (the cursor, map, threshold or filter changed). Returns the time (ms).
export function drawSlices() {
  if (!panels.length || !state.cursor || $('slices').hidden) return 0;
  const start = performance.now();
  const scale = fieldScale();
  for (const panel of panels) drawPanel(panel, scale);
  return performance.now() - start;
}

// The canvas point of an atlas position in a panel (for tests and the benchmark).
export function slicePoint(id, position) {
  const panel = panels.find((p) => p.spec.id === id);
  const rect = panel.canvas.getBoundingClientRect();
  const { scale, x0, y0 } = layout(panel);
  const [a, b] = atlasToPixel(panel, position);
  return [rect.left + x0 + scale * (a + 0.5), rect.top + y0 + scale * (b + 0.5)];
}
