// The probability field: one THREE.Points whose shader colours, thresholds, filters and clips
// every voxel on the GPU (docs/site-format.md), the maps it carries, and a voxel index so the
// slice panels and the readout find a voxel by position.
import * as THREE from 'three';
import { lut } from './colour.js';
import { app, CLIP_EPS_MM, state } from './state.js';
import { AXES, gridIndex, worldToAtlas } from './util.js';

// Maps every field has; the aggregation's optional ones come from data.json `maps`.
const BUILT_IN_MAPS = [
  { id: 'probability', label: 'LLNM probability', units: '', centre: 'rate' },
  { id: 'interval_width', label: '95 % interval width', units: 'probability' },
  { id: 'coverage', label: 'Coverage', units: 'nodules' },
];
// Display filters: which voxels a reader may call different from the cohort rate.
export const FILTERS = [
  { id: 'none', label: 'Every voxel' },
  { id: 'interval', label: 'Only where the 95 % interval excludes the cohort rate' },
  { id: 'band', label: 'Only where the simultaneous 95 % band excludes the cohort rate',
    needs: 'significance' },
  { id: 'fwer', label: 'Only where the permutation test gives FWER p < 0.05',
    needs: 't_log10p_fwer' },
];
const FWER_LOG10P = -Math.log10(0.05);

export function findPoints(root) {
  let found = null;
  root.traverse((node) => { if (!found && node.isPoints) found = node; });
  return found;
}

function range(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return lo <= hi ? [lo, hi] : [0, 1];
}

export function setupField(root) {
  const points = findPoints(root);
  if (!points) return null;
  const geometry = points.geometry;
  const attr = (name) => geometry.getAttribute(name)?.array ?? null;
  const position = geometry.getAttribute('position');
  const count = position.count;
  root.updateMatrixWorld(true);
  // POSITION holds the voxel's grid indices (KHR_mesh_quantization); the node scales to mm.
  const ijk = new Int32Array(3 * count);
  const atlas = new Float32Array(3 * count);
  const v = new THREE.Vector3();
  for (let i = 0; i < count; i += 1) {
    v.fromBufferAttribute(position, i);
    ijk.set([v.x, v.y, v.z], 3 * i);
    atlas.set(worldToAtlas(v.applyMatrix4(points.matrixWorld)), 3 * i);
  }
  const spacing = app.data.field_spacing_mm || 1;
  const dims = [0, 1, 2].map((d) => {
    let max = 0;
    for (let i = 0; i < count; i += 1) max = Math.max(max, ijk[3 * i + d]);
    return max + 1;
  });
  const origin = [0, 1, 2].map((d) => (count ? atlas[d] - spacing * ijk[d] : 0));
  const index = new Int32Array(dims[0] * dims[1] * dims[2]).fill(-1);
  for (let i = 0; i < count; i += 1) {
    index[(ijk[3 * i + 2] * dims[1] + ijk[3 * i + 1]) * dims[0] + ijk[3 * i]] = i;
  }
  const ci = geometry.getAttribute('_ci');
  const low = new Float32Array(count);
  const high = new Float32Array(count);
  for (let i = 0; i < count; i += 1) { low[i] = ci.getX(i); high[i] = ci.getY(i); }
  const n = attr('_n');
  const maps = {
    probability: attr('_prob'),
    interval_width: high.map((h, i) => h - low[i]),
    coverage: Float32Array.from(n),
  };
  const mapSpecs = [...BUILT_IN_MAPS];
  for (const spec of app.data.maps ?? []) {
    const values = attr(spec.attribute);
    if (!values) continue;
    maps[spec.id] = values;
    // The significance map is a filter (-1, 0, +1), not something to colour by.
    if (spec.id !== 'significance') mapSpecs.push(spec);
  }
  const ranges = Object.fromEntries(Object.entries(maps).map(([id, vs]) => [id, range(vs)]));
  const pass = new Float32Array(count).fill(1);
  geometry.setAttribute('aPass', new THREE.BufferAttribute(pass, 1));
  // Only the shell of the shown voxels is drawn (see updateShell); one index buffer of full
  // size, filled from the start, so nothing is reallocated on the GPU.
  const drawn = new THREE.BufferAttribute(new Uint32Array(Math.max(count, 1)), 1);
  drawn.setUsage(THREE.DynamicDrawUsage);
  geometry.setIndex(drawn);
  points.material = new THREE.ShaderMaterial({
    uniforms: {
      uLut: { value: lut }, uRange: { value: new THREE.Vector2(0, 1) },
      uThreshold: { value: 0 }, uCoverage: { value: 0 }, uSize: { value: spacing },
      uViewportHeight: { value: 1 },
      uClipMin: { value: new THREE.Vector3() }, uClipMax: { value: new THREE.Vector3() },
    },
    vertexShader: FIELD_VERTEX,
    fragmentShader: FIELD_FRAGMENT,
  });
  return {
    points, count, atlas, ijk, dims, origin, spacing, index, maps, mapSpecs, ranges, pass,
    low, high, n, maxN: ranges.coverage[1], region: attr('_region'), dist: attr('_dist'),
    shownMap: null, shownFilter: null, shownCount: count, drawn: 0,
  };
}

// Hidden voxels are moved outside the clip volume, so they cost no fragments.
const FIELD_VERTEX = /* glsl */ `
attribute float aValue;
attribute float aPass;
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
  if (aValue < uThreshold || _n < uCoverage || aPass < 0.5
      || any(lessThan(atlas, uClipMin)) || any(greaterThan(atlas, uClipMax))) {
    gl_Position = vec4(2.0, 2.0, 2.0, 1.0);
    gl_PointSize = 0.0;
    return;
  }
  vT = clamp((aValue - uRange.x) / max(uRange.y - uRange.x, 1e-6), 0.0, 1.0);
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

export const filterAvailable = (field, filter) => !filter.needs || Boolean(field.maps[filter.needs]);

function passes(field, i, filter, rate) {
  if (filter === 'interval') return field.low[i] > rate || field.high[i] < rate;
  if (filter === 'band') return field.maps.significance[i] !== 0;
  if (filter === 'fwer') return field.maps.t_log10p_fwer[i] > FWER_LOG10P;
  return true;
}

// The shown voxels that are not hidden on all six sides by other shown voxels: the only ones
// a reader can see, since every voxel is drawn opaque and as wide as the grid step. Drawing
// these alone gives the same picture at a fraction of the points (about a fifth of a filled
// gland at 0.5 mm), which is what keeps the full field interactive in software WebGL.
function updateShell(field) {
  const { dims, index, ijk, count } = field;
  const shown = new Uint8Array(count);
  let shownCount = 0;
  for (let i = 0; i < count; i += 1) {
    shown[i] = isShown(field, i) ? 1 : 0;
    shownCount += shown[i];
  }
  const strides = [1, dims[0], dims[0] * dims[1]];
  const drawn = field.points.geometry.index;
  let m = 0;
  for (let i = 0; i < count; i += 1) {
    if (!shown[i]) continue;
    const flat = ijk[3 * i] + strides[1] * ijk[3 * i + 1] + strides[2] * ijk[3 * i + 2];
    let covered = true;
    for (let d = 0; d < 3 && covered; d += 1) {
      for (const step of [-1, 1]) {
        const k = ijk[3 * i + d] + step;
        const j = k < 0 || k >= dims[d] ? -1 : index[flat + step * strides[d]];
        if (j < 0 || !shown[j]) { covered = false; break; }
      }
    }
    if (!covered) { drawn.array[m] = i; m += 1; }
  }
  field.shownCount = shownCount;
  field.drawn = m;
  field.points.geometry.setDrawRange(0, m);
  drawn.clearUpdateRanges();
  drawn.addUpdateRange(0, m);
  drawn.needsUpdate = true;
}

// Push the state's map, filter, threshold, coverage and clip to the shader and the shell.
export function applyFieldState(field) {
  const geometry = field.points.geometry;
  if (field.shownMap !== state.map) {
    field.shownMap = state.map;
    geometry.setAttribute('aValue', new THREE.BufferAttribute(field.maps[state.map], 1));
  }
  if (field.shownFilter !== state.filter) {
    field.shownFilter = state.filter;
    const rate = app.data.prevalence ?? 0.5;
    for (let i = 0; i < field.count; i += 1) field.pass[i] = passes(field, i, state.filter, rate);
    geometry.getAttribute('aPass').needsUpdate = true;
  }
  const u = field.points.material.uniforms;
  u.uThreshold.value = state.threshold;
  u.uCoverage.value = state.coverage;
  u.uClipMin.value.set(...AXES.map((a) => state.clip[a][0] - CLIP_EPS_MM));
  u.uClipMax.value.set(...AXES.map((a) => state.clip[a][1] + CLIP_EPS_MM));
  updateShell(field);
}

// Shown as the slices show it: map value, coverage and filter (clipping is the 3D view's).
export function passesDisplay(field, i) {
  return field.maps[state.map][i] >= state.threshold && field.n[i] >= state.coverage
    && field.pass[i] > 0;
}

export function isShown(field, i) {
  if (!passesDisplay(field, i)) return false;
  for (let d = 0; d < 3; d += 1) {
    const v = field.atlas[3 * i + d];
    const [lo, hi] = state.clip[AXES[d]];
    if (v < lo - CLIP_EPS_MM || v > hi + CLIP_EPS_MM) return false;
  }
  return true;
}

export function countShown(field) {
  let shown = 0;
  for (let i = 0; i < field.count; i += 1) if (isShown(field, i)) shown += 1;
  return shown;
}

// The field voxel at an atlas position (mm), or -1 where the field has none.
export function voxelAt(field, position) {
  const flat = gridIndex(field.dims, field.origin, field.spacing, position);
  return flat < 0 ? -1 : field.index[flat];
}

export const voxelPosition = (field, i) => Array.from(field.atlas.subarray(3 * i, 3 * i + 3));
