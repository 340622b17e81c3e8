// The one state object (what the user set, serialised to the URL hash) and the loaded page
// (`app`: data.json, the three.js objects, the field). Every module reads these two.
export const DEFAULT_CMAP = 'cividis';
export const DEFAULT_OPACITY = 0.4;
// Voxel centres sit exactly on slider steps: a small tolerance keeps CPU and GPU in agreement.
export const CLIP_EPS_MM = 1e-3;

export const state = {
  map: 'probability', scale: 'range', filter: 'none', threshold: 0, coverage: 0,
  cmap: DEFAULT_CMAP, opacity: DEFAULT_OPACITY, capsuleColour: false,
  clip: { x: [0, 0], y: [0, 0], z: [0, 0] }, layers: {}, cursor: null,
};

export const app = {
  data: null, renderer: null, scene: null, camera: null, controls: null,
  field: null,      // the probability field (field.js), or null
  layers: {},       // layer id -> THREE.Object3D
  glandBox: null,   // atlas-mm bounds of the gland (capsule, else field, else everything)
  marker: null,
  labels: null,     // atlas labels on the field grid for the slice panels (slices.js)
  errors: [],       // messages shown to the user (also for tests)
};
