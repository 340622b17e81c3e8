// The 3D view: renderer, camera and controls, the layers (field, capsule, isosurfaces,
// landmarks, published points), preset views, picking, overlays and the screenshot.
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { colourAt, fieldScale } from './colour.js';
import { findPoints, isShown, setupField } from './field.js';
import { app, CLIP_EPS_MM, DEFAULT_OPACITY, state } from './state.js';
import { $, AXES, atlasToWorld, cssColour, element, TISSUE, worldToAtlas } from './util.js';

const BACKGROUND = 0x2b3038;
const MARKER = 0xff4f9a;
const LANDMARK_COLOUR = 0x8fb8e8;
const ISOSURFACE_OPACITY = 0.5;
// Camera direction from the target and screen up, in three.js world axes (x left, y superior,
// z anterior). Transverse looks up from the feet with anterior at the top, so the patient's
// right is on the screen's left, as on a transverse ultrasound image; longitudinal looks from
// the patient's right with anterior at the top and cranial on the left, as a longitudinal one.
const PRESETS = {
  anterior: { direction: [0, 0, 1], up: [0, 1, 0] },
  left: { direction: [1, 0, 0], up: [0, 1, 0] },
  right: { direction: [-1, 0, 0], up: [0, 1, 0] },
  transverse: { direction: [0, -1, 0], up: [0, 0, 1] },
  longitudinal: { direction: [-1, 0, 0], up: [0, 0, 1] },
};
const PRESET_KEYS = { 1: 'anterior', 2: 'left', 3: 'right', 4: 'transverse',
  5: 'longitudinal' };
const ORIENTATION = [  // letter, name, atlas direction (LPS)
  ['R', 'right', [-1, 0, 0]], ['L', 'left', [1, 0, 0]], ['A', 'anterior', [0, -1, 0]],
  ['P', 'posterior', [0, 1, 0]], ['S', 'superior', [0, 0, 1]], ['I', 'inferior', [0, 0, -1]],
];
const NICE_LENGTHS_MM = [1, 2, 5, 10, 20, 50, 100, 200];
const clipPlanes = AXES.flatMap(() => [new THREE.Plane(), new THREE.Plane()]);
let publishedTag = null;  // caption above the published point set: its world anchor and node
let renderQueued = false;
const listeners = { viewChange: () => {} };

export function webglAvailable() {
  try {
    const gl = document.createElement('canvas').getContext('webgl2');
    gl?.getExtension('WEBGL_lose_context')?.loseContext();
    return Boolean(gl);
  } catch {
    return false;
  }
}

export function createScene(onViewChange) {
  listeners.viewChange = onViewChange;
  const renderer = new THREE.WebGLRenderer({ antialias: false });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  renderer.setClearColor(BACKGROUND);
  renderer.localClippingEnabled = true;
  const canvas = renderer.domElement;
  canvas.id = 'canvas';
  canvas.tabIndex = 0;
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', '3D view of the LLNM probability field; keyboard: arrows '
    + 'rotate, Shift+arrows pan, plus and minus zoom, 1 to 5 preset views, Escape unpins');
  $('view').append(canvas);
  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(35, 1, 1, 5000);
  scene.add(camera);
  scene.add(new THREE.AmbientLight(0xffffff, 0.5));
  const headlight = new THREE.DirectionalLight(0xffffff, 0.9);
  headlight.position.set(0.3, 0.5, 1);
  camera.add(headlight);
  Object.assign(app, { renderer, scene, camera });
  makeControls([0, 1, 0]);
}

// OrbitControls keeps the camera's up from its construction, so a preset with another up
// gets new controls.
function makeControls(up) {
  const { camera, renderer } = app;
  const target = app.controls?.target.clone();
  app.controls?.dispose();
  camera.up.set(...up);
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.minDistance = 5;
  controls.maxDistance = 1500;
  if (target) controls.target.copy(target);
  controls.addEventListener('change', () => listeners.viewChange());
  app.controls = controls;
}

export async function loadLayer(loader, spec) {
  const gltf = await loader.loadAsync(spec.file);
  const root = gltf.scene;
  root.name = spec.id;
  if (spec.id === 'field') {
    app.field = setupField(root);
    if (!app.field) return;  // an empty field (no voxel reached min_cases) gets no layer
  } else if (spec.id === 'capsule' || spec.id === 'isosurfaces') {
    setupSurfaces(spec.id, root);
  } else if (spec.id === 'published_points') {
    setupPublished(root);
  }
  app.scene.add(root);
  app.layers[spec.id] = root;
}

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
  const mm = 1.5 * (app.data.field_spacing_mm || 1);
  points.material = new THREE.PointsMaterial({
    size: mm / Math.tan(THREE.MathUtils.degToRad(app.camera.fov) / 2), vertexColors: true,
  });
}

// Trachea and common carotids (atlas.json landmarks: vertical cylinders) over the gland's
// height, as a layer of their own: outlines (rings and walls), which cost little to draw and
// hide nothing behind them.
const LANDMARK_SEGMENTS = 48;
const LANDMARK_WALLS = 8;

function cylinderOutline(radius, zLo, zHi) {
  const vertices = [];
  const at = (angle, z) => [radius * Math.cos(angle), z, radius * Math.sin(angle)];
  for (const z of [zLo, (zLo + zHi) / 2, zHi]) {
    for (let k = 0; k < LANDMARK_SEGMENTS; k += 1) {
      const a = (2 * Math.PI * k) / LANDMARK_SEGMENTS;
      vertices.push(...at(a, z), ...at(a + (2 * Math.PI) / LANDMARK_SEGMENTS, z));
    }
  }
  for (let k = 0; k < LANDMARK_WALLS; k += 1) {
    const a = (2 * Math.PI * k) / LANDMARK_WALLS;
    vertices.push(...at(a, zLo), ...at(a, zHi));
  }
  return new THREE.BufferGeometry()
    .setAttribute('position', new THREE.Float32BufferAttribute(vertices, 3));
}

export function addLandmarks() {
  const marks = Object.entries(app.data.landmarks ?? {});
  if (!marks.length || !app.glandBox) return null;
  const [zLo, zHi] = [app.glandBox.min[2] - 5, app.glandBox.max[2] + 5];
  const root = new THREE.Group();
  root.name = 'landmarks';
  const material = new THREE.LineBasicMaterial({
    color: LANDMARK_COLOUR, transparent: true, opacity: 0.7, clippingPlanes: clipPlanes,
  });
  for (const [name, mark] of marks) {
    const [cx, cy] = mark.centre_xy_mm;
    const outline = new THREE.LineSegments(cylinderOutline(mark.radius_mm, zLo, zHi), material);
    outline.name = name;
    outline.position.copy(atlasToWorld(cx, cy, 0));
    root.add(outline);
  }
  app.scene.add(root);
  app.layers.landmarks = root;
  return { id: 'landmarks', label: 'Trachea and carotids (atlas landmarks)', visible: true };
}

export function computeBounds() {
  const source = app.layers.capsule ?? app.layers.field ?? app.scene;
  const world = new THREE.Box3().setFromObject(source);
  if (world.isEmpty()) world.setFromObject(app.scene);
  if (world.isEmpty()) world.set(new THREE.Vector3(-1, -1, -1), new THREE.Vector3(1, 1, 1));
  app.glandBox = {
    min: [world.min.x, -world.max.z, world.min.y],
    max: [world.max.x, -world.min.z, world.max.y],
  };
}

const glandCentre = () => atlasToWorld(
  ...app.glandBox.min.map((lo, d) => (lo + app.glandBox.max[d]) / 2));
const glandExtent = () => AXES.map((a, d) => app.glandBox.max[d] - app.glandBox.min[d]);
const glandSize = () => Math.max(...glandExtent());

export function addMarker() {
  const size = app.field?.spacing ?? 1;
  const marker = new THREE.LineSegments(
    new THREE.EdgesGeometry(new THREE.BoxGeometry(size, size, size)),
    new THREE.LineBasicMaterial({ color: MARKER, depthTest: false }),
  );
  marker.renderOrder = 10;
  marker.visible = false;
  app.scene.add(marker);
  app.marker = marker;
}

export function showMarker(position) {
  const { marker } = app;
  const visible = Boolean(position);
  if (visible) marker.position.copy(atlasToWorld(...position));
  if (visible || marker.visible) {
    marker.visible = visible;
    requestRender();
  }
}

export function applySceneState() {
  AXES.forEach((a, d) => {
    const [lo, hi] = state.clip[a];
    // A plane keeps the side where normal . p + constant >= 0 (world coordinates).
    const normal = atlasToWorld(...AXES.map((b, e) => Number(e === d)));
    clipPlanes[2 * d].set(normal, -(lo - CLIP_EPS_MM));
    clipPlanes[2 * d + 1].set(normal.clone().negate(), hi + CLIP_EPS_MM);
  });
  for (const [id, root] of Object.entries(app.layers)) root.visible = Boolean(state.layers[id]);
  app.layers.capsule?.traverse((node) => {
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
  requestRender();
}

// ---- camera ------------------------------------------------------------------------------

// World box of the visible layers (the gland's when none is visible): what presets frame.
function visibleBox() {
  const box = new THREE.Box3();
  for (const [id, root] of Object.entries(app.layers)) {
    if (state.layers[id] && id !== 'landmarks') box.expandByObject(root);
  }
  if (box.isEmpty()) box.setFromCenterAndSize(glandCentre(), new THREE.Vector3(...glandExtent()));
  return box;
}

export function setPreset(name) {
  const preset = PRESETS[name];
  if (!app.camera.up.equals(new THREE.Vector3(...preset.up))) makeControls(preset.up);
  const { camera, controls } = app;
  const direction = new THREE.Vector3(...preset.direction).normalize();
  const box = visibleBox();
  const size = box.getSize(new THREE.Vector3());
  const centre = box.getCenter(new THREE.Vector3());
  const vertical = THREE.MathUtils.degToRad(camera.fov) / 2;
  const horizontal = Math.atan(Math.tan(vertical) * camera.aspect);
  const radius = 0.55 * Math.max(size.x, size.y, size.z);
  const distance = radius / Math.tan(Math.min(vertical, horizontal)) + radius;
  controls.target.copy(centre);
  camera.position.copy(centre).addScaledVector(direction, distance);
  camera.lookAt(controls.target);
  controls.update();
  listeners.viewChange();
}

// A camera from the URL: position, target and up.
export function setCamera(position, target, up) {
  if (up && !app.camera.up.equals(new THREE.Vector3(...up))) makeControls(up);
  app.camera.position.fromArray(position);
  app.controls.target.fromArray(target);
  app.controls.update();
  listeners.viewChange();
}

export function onKey(event, unpin) {
  const { controls } = app;
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
  if (event.key === 'Escape') unpin();
  else if (PRESET_KEYS[event.key]) setPreset(PRESET_KEYS[event.key]);
  else if (actions[event.key]) {
    actions[event.key]();
    controls.update();
  } else return;
  event.preventDefault();
}

// ---- picking -----------------------------------------------------------------------------

const raycaster = new THREE.Raycaster();

// The nearest visible field voxel or published point under a page point, or null.
export function pickAt(clientX, clientY) {
  const { field, renderer, camera } = app;
  const rect = renderer.domElement.getBoundingClientRect();
  const ndc = new THREE.Vector2(((clientX - rect.left) / rect.width) * 2 - 1,
    -((clientY - rect.top) / rect.height) * 2 + 1);
  raycaster.setFromCamera(ndc, camera);
  raycaster.params.Points.threshold = 0.6 * (field?.spacing ?? app.data.field_spacing_mm ?? 1);
  const candidates = [];
  if (field && state.layers.field) {
    const hit = raycaster.intersectObject(field.points, false)
      .find((h) => isShown(field, h.index));
    if (hit) candidates.push({ kind: 'field', index: hit.index, distance: hit.distance });
  }
  const published = app.layers.published_points && findPoints(app.layers.published_points);
  if (published && state.layers.published_points) {
    const hit = raycaster.intersectObject(published, false)[0];
    if (hit) {
      const position = worldToAtlas(new THREE.Vector3()
        .fromBufferAttribute(published.geometry.getAttribute('position'), hit.index)
        .applyMatrix4(published.matrixWorld));
      candidates.push({ kind: 'published', position, index: hit.index, distance: hit.distance });
    }
  }
  candidates.sort((a, b) => a.distance - b.distance);
  return candidates[0] ?? null;
}

// ---- overlays: orientation letters and scale bar -------------------------------------------

export function createOrientationLabels() {
  for (const [letter, name] of ORIENTATION) {
    const label = element('span', letter, 'orientation-label');
    label.title = name;
    $('orientation').append(label);
  }
  if (!app.layers.published_points) return;
  const spec = app.data.layers.find((layer) => layer.id === 'published_points');
  const box = new THREE.Box3().setFromObject(app.layers.published_points);
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
  const { camera, controls } = app;
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
    setStyle(label, 'transform',
      `translate(${x.toFixed(1)}px, ${y.toFixed(1)}px) translate(-50%, -50%)`);
  });
  if (publishedTag) {
    const p = publishedTag.anchor.clone().project(camera);
    publishedTag.node.hidden = !state.layers.published_points || p.z > 1;
    const [x, y] = [((p.x + 1) / 2) * width, ((1 - p.y) / 2) * height];
    setStyle(publishedTag.node, 'transform',
      `translate(${x.toFixed(1)}px, ${y.toFixed(1)}px) translate(-50%, -150%)`);
  }
  const distance = camera.position.distanceTo(controls.target);
  const pxPerMm = height / (2 * distance * Math.tan(THREE.MathUtils.degToRad(camera.fov) / 2));
  const length = NICE_LENGTHS_MM.filter((mm) => mm * pxPerMm <= 140).pop() ?? NICE_LENGTHS_MM[0];
  setStyle($('scalebar-bar'), 'width', `${(length * pxPerMm).toFixed(1)}px`);
  $('scalebar-label').textContent = `${length} mm`;
}

// ---- rendering ---------------------------------------------------------------------------

export function resizeIfNeeded() {
  const { renderer, camera, field } = app;
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

export function render() {
  const [width, height] = resizeIfNeeded();
  updateOverlays(width, height);
  app.renderer.render(app.scene, app.camera);
}

export function requestRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

// ---- screenshot --------------------------------------------------------------------------

export function saveScreenshot() {
  render();
  const source = app.renderer.domElement;
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
  const scale = fieldScale();
  const [bx, by, bw, bh] = offset($('legend-bar'));
  const gradient = ctx.createLinearGradient(bx, 0, bx + bw, 0);
  for (let t = 0; t <= 1; t += 0.125) gradient.addColorStop(t, cssColour(colourAt(scale.cmap, t)));
  ctx.fillStyle = gradient;
  ctx.fillRect(bx, by, bw, bh);
  ctx.fillStyle = '#ffffff';
  ctx.fillText($('legend-title').textContent, bx, by - 12);
  ctx.fillText($('legend-min').textContent, bx, by + bh + 10);
  ctx.textAlign = 'center';
  ctx.fillText($('legend-mid').textContent, bx + bw / 2, by + bh + 10);
  ctx.textAlign = 'right';
  ctx.fillText($('legend-max').textContent, bx + bw, by + bh + 10);
}
