// What the viewer (llnm3d/site/viewer/*.js) takes from three.js: `make vendor-three` bundles
// these exports, and what they need, into one minified module (esbuild, tree-shaken), so the
// site ships and parses only the part of three.js it uses. tests/test_vendor.py checks that
// every THREE.* name the viewer uses is exported here.
export {
  AmbientLight, Box3, BoxGeometry, BufferAttribute, BufferGeometry, Color, DataTexture,
  DirectionalLight, DoubleSide, DynamicDrawUsage, EdgesGeometry, Float32BufferAttribute,
  FrontSide, Group, LineBasicMaterial, LineSegments, MathUtils, MeshLambertMaterial, Object3D,
  PerspectiveCamera, Plane, Points, PointsMaterial, Raycaster, Scene, ShaderMaterial, Vector2,
  Vector3, WebGLRenderer,
} from 'three';
export { GLTFLoader } from 'three/examples/jsm/loaders/GLTFLoader.js';
export { OrbitControls } from 'three/examples/jsm/controls/OrbitControls.js';
