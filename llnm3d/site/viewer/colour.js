// Colour maps (from data.json, shared with the glTF export), the field's lookup texture and
// the colour scale: sequential over the shown range, or diverging about a reference (the
// cohort rate for probabilities), always with its ends stated in the legend.
import * as THREE from 'three';
import { app, state } from './state.js';
import { $, cssColour, fmtP, TISSUE } from './util.js';

const DIVERGING_CMAP = 'RdBu (diverging)';
const MAP_LABELS = {
  cividis: 'Cividis (colour-blind safe)', viridis: 'Viridis',
  'published orange': 'Published orange (as the LLNM-Net page)',
};
let colourMaps = {};  // name -> [[r, g, b] 0-255, ...]
let lutKey = null;
export const lut = new THREE.DataTexture(new Uint8Array(256 * 4), 256, 1);

export function loadColourMaps(data) {
  colourMaps = Object.fromEntries(Object.entries(data.colormaps)
    .map(([name, stops]) => [name, stops.map((rgb) => rgb.map((c) => Math.round(255 * c)))]));
}

// The maps a user picks for a sequential scale; the diverging one comes with its scale.
const sequentialMaps = () => Object.keys(colourMaps).filter((n) => n !== DIVERGING_CMAP);
export const hasColourMap = (name) => name in colourMaps && name !== DIVERGING_CMAP;
const colourMapLabel = (name) => MAP_LABELS[name] ?? name;

export function colourAt(name, t) {
  const stops = colourMaps[name];
  const s = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(s), stops.length - 2);
  const f = s - i;
  return stops[i].map((a, c) => Math.round(a + (stops[i + 1][c] - a) * f));
}

// ---- the displayed map and its scale -------------------------------------------------------

export function currentMap() {
  return app.field?.mapSpecs.find((m) => m.id === state.map) ?? app.field?.mapSpecs[0] ?? null;
}

// The reference a diverging scale is centred on, or null where the map has none.
export function centreOf(spec) {
  if (!spec || spec.centre === null || spec.centre === undefined) return null;
  if (spec.centre === 'rate') return app.data.prevalence ?? null;
  return Number(spec.centre);
}

export const divergingAllowed = () => centreOf(currentMap()) !== null;

// {lo, hi, cmap, centre}: what the field, the slices and the legend colour by.
export function fieldScale() {
  const spec = currentMap();
  const [lo, hi] = app.field?.ranges[spec?.id] ?? [0, 1];
  const centre = centreOf(spec);
  if (state.scale === 'diverging' && centre !== null) {
    const half = Math.max(hi - centre, centre - lo, 1e-6);
    return { lo: centre - half, hi: centre + half, cmap: DIVERGING_CMAP, centre };
  }
  return { lo, hi: hi > lo ? hi : lo + 1e-6, cmap: state.cmap, centre: null };
}

// The probability scale the capsule and isosurfaces use: the field's while it shows the
// probability, else the chosen sequential map over the probability range.
export function probabilityScale() {
  if (state.map === 'probability' || !app.field) return fieldScale();
  const [lo, hi] = app.field.ranges.probability;
  return { lo, hi, cmap: state.cmap, centre: null };
}

export const scaleT = (scale, value) => (value - scale.lo) / (scale.hi - scale.lo || 1);

export function applyScale() {
  const scale = fieldScale();
  if (lutKey !== scale.cmap) {
    lutKey = scale.cmap;
    const bytes = lut.image.data;
    for (let i = 0; i < 256; i += 1) bytes.set([...colourAt(scale.cmap, i / 255), 255], 4 * i);
    lut.needsUpdate = true;
  }
  if (app.field) app.field.points.material.uniforms.uRange.value.set(scale.lo, scale.hi);
  recolourSurfaces(probabilityScale());
  updateLegend(scale);
}

// The capsule's vertex colours follow the scale (from its _prob, -1 where undefined), so the
// surface and the legend agree; glTF vertex colours are linear, hence the conversion.
let surfaceKey = '';
function recolourSurfaces(scale) {
  const key = `${scale.cmap}|${scale.lo}|${scale.hi}`;
  if (key === surfaceKey) return;
  surfaceKey = key;
  const colour = new THREE.Color();
  app.layers.capsule?.traverse((node) => {
    const prob = node.isMesh && node.geometry.getAttribute('_prob');
    if (!prob) return;
    const colours = new Float32Array(3 * prob.count);
    for (let i = 0; i < prob.count; i += 1) {
      const p = prob.getX(i);
      if (p < 0) colour.set(TISSUE);
      else colour.setStyle(cssColour(colourAt(scale.cmap, scaleT(scale, p))));
      colour.toArray(colours, 3 * i);
    }
    node.geometry.setAttribute('color', new THREE.BufferAttribute(colours, 3));
  });
  app.layers.isosurfaces?.traverse((node) => {
    if (!node.isMesh) return;
    const level = node.userData.level ?? scale.lo;
    node.material.color.setStyle(cssColour(colourAt(scale.cmap, scaleT(scale, level))));
  });
}

function fmtValue(spec, v) {
  if (spec.id === 'coverage') return String(Math.round(v));
  return Math.abs(v) >= 10 ? v.toFixed(1) : fmtP(v);
}

function updateLegend(scale) {
  const spec = currentMap();
  if (!spec) return;
  const stops = Array.from({ length: 9 }, (_, i) => i / 8)
    .map((t) => `${cssColour(colourAt(scale.cmap, t))} ${t * 100}%`);
  $('legend-bar').style.background = `linear-gradient(to right, ${stops.join(', ')})`;
  $('legend-title').textContent = spec.units ? `${spec.label} (${spec.units})` : spec.label;
  $('legend-min').textContent = fmtValue(spec, scale.lo);
  $('legend-max').textContent = fmtValue(spec, scale.hi);
  const centreName = spec.centre === 'rate' ? 'cohort rate ' : '';
  $('legend-mid').textContent = scale.centre !== null
    ? `${centreName}${fmtValue(spec, scale.centre)}` : fmtValue(spec, (scale.lo + scale.hi) / 2);
  const below = Math.min(Math.max(scaleT(scale, state.threshold), 0), 1);
  $('legend-below').style.width = `${100 * below}%`;
  // The reference on a sequential scale too, so a reader sees what is above the cohort rate.
  const centre = centreOf(spec);
  const rateAt = centre === null ? -1 : scaleT(scale, centre);
  $('legend-rate').hidden = scale.centre !== null || rateAt < 0 || rateAt > 1;
  $('legend-rate').style.left = `${100 * rateAt}%`;
  const [lo, hi] = app.field.ranges[spec.id];
  const notes = scale.centre !== null
    ? [`Centred on ${centreName || 'reference '}${fmtValue(spec, scale.centre)}: blue below, `
      + `red above; the ends are as far from it as the furthest shown voxel (${fmtValue(spec, lo)}`
      + ` to ${fmtValue(spec, hi)}).`]
    : [`Ends: the lowest and highest shown voxel (${app.data.min_cases ?? 0} or more nodules)`
      + (rateAt >= 0 && rateAt <= 1 ? `; the white mark is the ${centreName || 'reference '}`
        + `${fmtValue(spec, centre)}.` : '.')];
  if (state.threshold > lo) notes.push(`Below ${fmtValue(spec, state.threshold)} hidden (hatched).`);
  notes.push(`Voxels with fewer than ${state.coverage} nodules are not shown.`);
  $('legend-note').textContent = notes.join(' ');
}

export function fillColourMapOptions(select) {
  for (const name of sequentialMaps()) {
    const option = document.createElement('option');
    option.value = name;
    option.textContent = colourMapLabel(name);
    select.append(option);
  }
}
