"""A minimal binary glTF 2.0 writer for point fields and triangle meshes.

Only what llnm3d exports: one buffer, quantised positions and normals
(``KHR_mesh_quantization``), custom per-vertex attributes (names starting with ``_``), one root
node that turns atlas LPS millimetres into glTF's Y-up frame (in mm, or in metres, glTF's own
unit). Written here rather than through trimesh because trimesh cannot write custom
attributes on a point primitive.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..checks import check_choice
from ..io import atomic_path

ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
POINTS, TRIANGLES = 0, 4
QUANTIZATION = "KHR_mesh_quantization"
# -90 degrees about X: atlas (x, y, z) = (left, posterior, superior) -> glTF (x, z, -y), so
# superior is up and anterior faces +Z, the front of a glTF asset.
LPS_TO_GLTF_ROTATION = [-np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)]
# Length unit of a file -> the root node's scale from atlas mm. The glTF specification's unit
# is the metre; the site's viewer and its camera settings work in mm.
UNIT_SCALES = {"mm": 1.0, "m": 1e-3}

_COMPONENT = {np.dtype(np.int8): 5120, np.dtype(np.uint8): 5121, np.dtype(np.int16): 5122,
              np.dtype(np.uint16): 5123, np.dtype(np.uint32): 5125,
              np.dtype(np.float32): 5126}
_TYPE = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}


class GlbBuilder:
    """Collects accessors, meshes and nodes, then writes one ``.glb`` file.

    Nodes added with :meth:`add_node` hang under the root node ``llnm3d``, whose rotation maps
    atlas LPS mm to glTF's frame (and whose scale, with ``units="m"``, turns mm into metres);
    each node's own translation and scale turn its (quantised) vertex coordinates back into
    atlas mm.
    """

    def __init__(self, units: str = "mm") -> None:
        check_choice("units", units, UNIT_SCALES)
        root: dict = {"name": "llnm3d", "rotation": LPS_TO_GLTF_ROTATION, "children": []}
        if units != "mm":
            root["scale"] = [UNIT_SCALES[units]] * 3
        self._blob = bytearray()
        self.doc: dict = {"asset": {"version": "2.0"}, "scene": 0,
                          "scenes": [{"nodes": [0]}], "nodes": [root],
                          "meshes": [], "materials": [], "accessors": [], "bufferViews": [],
                          "buffers": [{"byteLength": 0}]}
        self._quantized = False

    def accessor(self, data: np.ndarray, *, normalized: bool = False,
                 target: int = ARRAY_BUFFER, bounds: bool = False) -> int:
        """Append ``data`` (shape (N,) or (N, C)) as an accessor; return its index.

        Vertex attributes whose element is not a multiple of 4 bytes are padded to one
        (glTF's alignment rule) and read back with a byte stride.
        """
        data = np.ascontiguousarray(data)
        columns = 1 if data.ndim == 1 else data.shape[1]
        rows = data.reshape(len(data), columns)
        element = columns * data.itemsize
        view: dict = {"buffer": 0, "target": target}
        if target == ARRAY_BUFFER and element % 4:
            stride = -(-element // 4) * 4
            padded = np.zeros((len(rows), stride // data.itemsize), data.dtype)
            padded[:, :columns] = rows
            rows, view["byteStride"] = padded, stride
        while len(self._blob) % 4:
            self._blob.append(0)
        view["byteOffset"], view["byteLength"] = len(self._blob), rows.nbytes
        self._blob += rows.tobytes()
        self.doc["bufferViews"].append(view)
        accessor = {"bufferView": len(self.doc["bufferViews"]) - 1,
                    "componentType": _COMPONENT[data.dtype], "count": int(len(data)),
                    "type": _TYPE[columns]}
        if normalized:
            accessor["normalized"] = True
        if bounds:
            kind = float if data.dtype.kind == "f" else int
            accessor["min"] = [kind(v) for v in rows[:, :columns].min(axis=0)]
            accessor["max"] = [kind(v) for v in rows[:, :columns].max(axis=0)]
        self.doc["accessors"].append(accessor)
        return len(self.doc["accessors"]) - 1

    def material(self, name: str, rgba: list[float], *, blend: bool = False,
                 double_sided: bool = False) -> int:
        material: dict[str, Any] = {"name": name, "pbrMetallicRoughness": {
            "baseColorFactor": [float(c) for c in rgba], "metallicFactor": 0.0,
            "roughnessFactor": 0.8}}
        if blend:
            material["alphaMode"] = "BLEND"
        if double_sided:
            material["doubleSided"] = True
        self.doc["materials"].append(material)
        return len(self.doc["materials"]) - 1

    def add_node(self, name: str, attributes: dict[str, int], mode: int, material: int,
                 *, indices: int | None = None, translation=None, scale=None,
                 extras: dict | None = None) -> int:
        """Add a mesh of one primitive and a node showing it under the root."""
        primitive = {"attributes": attributes, "mode": mode, "material": material}
        # Core glTF wants float positions and normals; integers need the quantisation extension.
        self._quantized |= any(self.doc["accessors"][attributes[name]]["componentType"] != 5126
                               for name in ("POSITION", "NORMAL") if name in attributes)
        if indices is not None:
            primitive["indices"] = indices
        self.doc["meshes"].append({"name": name, "primitives": [primitive]})
        node: dict = {"name": name, "mesh": len(self.doc["meshes"]) - 1}
        if translation is not None:
            node["translation"] = [float(v) for v in translation]
        if scale is not None:
            node["scale"] = [float(v) for v in np.broadcast_to(scale, 3)]
        if extras:
            node["extras"] = extras
        self.doc["nodes"].append(node)
        self.doc["nodes"][0]["children"].append(len(self.doc["nodes"]) - 1)
        return len(self.doc["nodes"]) - 1

    def write(self, path: str | Path, extras: dict) -> Path:
        """Write the ``.glb`` atomically, with ``extras`` as ``asset.extras``."""
        doc = {**self.doc, "asset": {**self.doc["asset"], "extras": extras}}
        doc["buffers"] = [{"byteLength": len(self._blob)}]
        if self._quantized:
            doc["extensionsUsed"] = doc["extensionsRequired"] = [QUANTIZATION]
        doc = {key: value for key, value in doc.items() if value != []}
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        text += b" " * (-len(text) % 4)
        blob = bytes(self._blob) + b"\0" * (-len(self._blob) % 4)
        total = 12 + 8 + len(text) + 8 + len(blob)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(struct.pack("<4sII", b"glTF", 2, total))
                handle.write(struct.pack("<I4s", len(text), b"JSON") + text)
                handle.write(struct.pack("<I4s", len(blob), b"BIN\0") + blob)
        return Path(path)


def quantize_positions(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Positions as uint16 steps of one uniform size over their bounding box.

    Returns ``(steps, translation_mm, step_mm)`` with ``points ≈ translation + step * steps``;
    the error is at most half a step (the box's largest side / 131070).
    """
    low = points_mm.min(axis=0)
    step = max(float((points_mm.max(axis=0) - low).max()) / 65535.0, 1e-9)
    return np.rint((points_mm - low) / step).astype(np.uint16), low, step


def quantize_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals as normalised int16 (error < 3e-5, within the validator's unit tolerance)."""
    unit = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    return np.rint(unit * 32767).astype(np.int16)


def color_bytes(rgb_linear: np.ndarray) -> np.ndarray:
    """Linear RGB in [0, 1], shape (N, 3) -> opaque normalised RGBA bytes, shape (N, 4)."""
    rgba = np.ones((len(rgb_linear), 4))
    rgba[:, :3] = np.clip(rgb_linear, 0, 1)
    return np.rint(rgba * 255).astype(np.uint8)


def srgb_to_linear(rgb: npt.ArrayLike) -> np.ndarray:
    """sRGB components in [0, 1] to linear light (glTF vertex colours are linear)."""
    rgb = np.asarray(rgb, float)
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
