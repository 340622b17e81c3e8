// Small helpers shared by the viewer's modules: DOM, number formats and the two coordinate
// systems (atlas LPS mm; three.js world: x left, y superior, z anterior).
import * as THREE from 'three';

export const $ = (id) => document.getElementById(id);
export const fmtP = (p) => Number(p).toFixed(3);
export const fmtCount = (n) => Math.round(n).toLocaleString('en-US');
export const fmtMm = (v) => `${v < 0 ? '\u2212' : ''}${Math.abs(v).toFixed(1)}`;
export const fmtSigned = (v, digits = 2) => `${v < 0 ? '\u2212' : ''}${Math.abs(v).toFixed(digits)}`;
export const atlasToWorld = (x, y, z) => new THREE.Vector3(x, z, -y);
export const worldToAtlas = (v) => [v.x, -v.z, v.y];
export const cssColour = (rgb) => `rgb(${rgb.join(',')})`;
export const missing = (value) => value === null || value === undefined;
export const AXES = ['x', 'y', 'z'];
export const TISSUE = 0xe6cdc6;

export function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// p from -log10 p, in the words a reader expects ("< 0.001" rather than 1e-4 of a permutation).
export function fmtPValue(log10p) {
  const p = 10 ** -log10p;
  return p < 0.001 ? '< 0.001' : p.toFixed(3);
}

// Flat index (C order of z, y, x) of the voxel nearest an atlas position on a grid of `dims`
// [nx, ny, nz] voxels from `origin` (mm, the first voxel's centre) at `spacing` mm; -1 off it.
export function gridIndex(dims, origin, spacing, position) {
  let flat = 0;
  for (let d = 2; d >= 0; d -= 1) {
    const k = Math.round((position[d] - origin[d]) / spacing);
    if (k < 0 || k >= dims[d]) return -1;
    flat = flat * dims[d] + k;
  }
  return flat;
}
