import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from llnm3d import Atlas
from llnm3d.atlas import REGION_NAMES
from llnm3d.io import InputError


def lobe_dimensions(atlas, lobe):
    """Cranio-caudal length, and the largest transverse width and depth over axial sections."""
    k, j, i = np.nonzero(atlas.lobe_mask(lobe))
    s = atlas.spacing_mm
    widths = [np.ptp(i[k == kk]) for kk in np.unique(k)]
    depths = [np.ptp(j[k == kk]) for kk in np.unique(k)]
    return (np.ptp(k) + 1) * s, (max(widths) + 1) * s, (max(depths) + 1) * s


@pytest.mark.parametrize("lobe", ["R", "L"])
def test_lobe_dimensions_are_adult_sized(atlas, lobe):
    length, width, depth = lobe_dimensions(atlas, lobe)
    assert 40 <= length <= 60
    assert 15 <= width <= 20
    assert 13 <= depth <= 20


def test_right_lobe_is_on_patient_right(atlas):
    # LPS: +x is the patient's left.
    assert atlas.lobe_bounds_mm("R")[1, 0] < 0 < atlas.lobe_bounds_mm("L")[0, 0]


def test_isthmus_is_a_few_mm_thick_in_front_of_a_trachea_sized_gap(atlas):
    column = atlas.capsule_distance_mm(np.array([[0.0, y, 0.0] for y in np.arange(-8, 30, 0.1)]))
    inside_y = np.arange(-8, 30, 0.1)[column < 0]
    thickness = inside_y.max() - inside_y.min()
    assert 2.5 <= thickness <= 6
    assert abs(inside_y.mean()) < 1.0  # origin at the isthmus centre
    trachea = atlas.landmarks["trachea"]
    assert 8 <= trachea["radius_mm"] <= 11
    cx, cy = trachea["centre_xy_mm"]
    angles = np.linspace(0, 2 * np.pi, 64)
    for z in (-10.0, 0.0, 10.0, 20.0):
        ring = np.stack([cx + trachea["radius_mm"] * np.cos(angles),
                         cy + trachea["radius_mm"] * np.sin(angles), np.full(64, z)], axis=1)
        assert np.all(atlas.capsule_distance_mm(ring) > 0)


def test_surface_is_watertight_with_outward_normals(atlas):
    mesh = atlas.surface
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0
    probe = mesh.vertices[::97] + 1.0 * mesh.vertex_normals[::97]
    assert np.mean(atlas.capsule_distance_mm(probe) > 0) > 0.99


def test_surface_volume_matches_label_volume(atlas):
    label_volume = np.count_nonzero(atlas.labels) * atlas.spacing_mm**3
    assert abs(atlas.surface.volume - label_volume) / label_volume < 0.03
    assert 10_000 < label_volume < 25_000  # adult thyroid: 10-25 mL


def test_regions_partition_the_gland(atlas):
    values = set(np.unique(atlas.labels)) - {0}
    assert values == set(REGION_NAMES)
    assert np.array_equal(atlas.labels > 0, atlas.capsule_distance < 0)
    for label in REGION_NAMES:
        _, n_components = ndimage.label(atlas.labels == label)
        assert n_components == 1, REGION_NAMES[label]


@pytest.mark.parametrize("lobe", [1, 2])
def test_thirds_are_equal_lengths_along_the_long_axis(atlas, lobe):
    axis = atlas.lobe_axes[lobe]
    centre, direction = np.asarray(axis["centre_mm"]), np.asarray(axis["axis"])
    lo, hi = axis["length_range_mm"]
    assert direction[2] > 0.9  # mostly cranio-caudal, pointing up
    means = []
    for third in (1, 2, 3):
        k, j, i = np.nonzero(atlas.labels == 10 * lobe + third)
        proj = (atlas.voxel_to_world(np.stack([i, j, k], 1)) - centre) @ direction
        means.append(proj.mean())
        expected_lo = hi - third * (hi - lo) / 3
        assert proj.min() >= expected_lo - 1e-6
        assert proj.max() <= expected_lo + (hi - lo) / 3 + 1e-6
    assert means[0] > means[1] > means[2]  # upper above middle above lower


def test_capsule_distance_is_zero_on_surface_and_signed(atlas):
    on_surface = atlas.capsule_distance_mm(atlas.surface.vertices)
    assert np.max(np.abs(on_surface)) <= atlas.spacing_mm
    centre = np.asarray(atlas.lobe_axes[2]["centre_mm"])
    assert atlas.capsule_distance_mm(centre[None])[0] < -5
    vertex, normal = atlas.surface.vertices[0], atlas.surface.vertex_normals[0]
    outside = atlas.capsule_distance_mm((vertex + 4.0 * normal)[None])[0]
    assert outside == pytest.approx(4.0, abs=0.6)
    assert np.isnan(atlas.capsule_distance_mm(np.array([[500.0, 0, 0]])))[0]


def test_world_voxel_round_trip(atlas, rng):
    points = rng.uniform(-30, 30, size=(100, 3))
    assert np.allclose(atlas.voxel_to_world(atlas.world_to_voxel(points)), points)
    ijk = rng.integers(0, 50, size=(20, 3))
    assert np.allclose(atlas.world_to_voxel(atlas.voxel_to_world(ijk)), ijk)
    # a voxel's label is what region_of returns at its centre
    i, j, k = ijk.T
    assert np.array_equal(atlas.region_of(atlas.voxel_to_world(ijk)), atlas.labels[k, j, i])


def test_saved_volumes_reload_with_same_geometry(atlas, tmp_path):
    atlas.save(tmp_path)
    for name in ("labels.nii.gz", "capsule_distance.nii.gz"):
        image = sitk.ReadImage(str(tmp_path / name))
        assert np.allclose(image.GetOrigin(), atlas.origin_mm)
        assert np.allclose(image.GetSpacing(), atlas.spacing_mm)
        assert np.allclose(image.GetDirection(), np.eye(3).ravel())
        # nibabel reports RAS: x and y flip sign relative to LPS.
        nii = nib.load(tmp_path / name)
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        assert np.allclose(nii.affine[:3, :3], lps_to_ras * atlas.spacing_mm)
        assert np.allclose(nii.affine[:3, 3], lps_to_ras @ atlas.origin_mm)
        assert np.array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0),
                              sitk.GetArrayFromImage(image))
    assert (tmp_path / "capsule.glb").stat().st_size > 0
    assert (tmp_path / "capsule.stl").stat().st_size > 0


def test_load_round_trip(atlas, tmp_path):
    atlas.save(tmp_path)
    loaded = Atlas.load(tmp_path)
    assert np.array_equal(loaded.labels, atlas.labels)
    assert np.allclose(loaded.capsule_distance, atlas.capsule_distance)
    assert loaded.landmarks == atlas.landmarks
    assert loaded.surface.is_watertight
    assert loaded.surface.volume == pytest.approx(atlas.surface.volume, rel=1e-3)


def test_load_derives_thirds_and_distance_from_a_bare_label_map(atlas, tmp_path):
    sitk_labels = sitk.GetImageFromArray((atlas.labels // 10).astype(np.uint8))
    sitk_labels.SetOrigin(tuple(atlas.origin_mm))
    sitk_labels.SetSpacing((atlas.spacing_mm,) * 3)
    sitk.WriteImage(sitk_labels, str(tmp_path / "labels.nii.gz"))
    loaded = Atlas.load(tmp_path)
    assert np.array_equal(loaded.labels, atlas.labels)
    assert np.allclose(loaded.capsule_distance, atlas.capsule_distance)


def test_load_rejects_missing_folder_and_unknown_labels(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Atlas.load(tmp_path / "nope")
    image = sitk.GetImageFromArray(np.full((4, 4, 4), 99, np.uint8))
    sitk.WriteImage(image, str(tmp_path / "labels.nii.gz"))
    with pytest.raises(InputError, match="unknown region labels"):
        Atlas.load(tmp_path)


def test_resolution_is_a_parameter(atlas):
    coarse = Atlas.default(spacing_mm=1.0)
    assert coarse.spacing_mm == 1.0
    fine_volume = np.count_nonzero(atlas.labels) * atlas.spacing_mm**3
    coarse_volume = np.count_nonzero(coarse.labels) * coarse.spacing_mm**3
    assert coarse_volume == pytest.approx(fine_volume, rel=0.03)
    with pytest.raises(InputError):
        Atlas.default(spacing_mm=5.0)


def test_transverse_section_layout_and_content(atlas):
    centre = np.asarray(atlas.lobe_axes[1]["centre_mm"])
    cut = atlas.section("R", "transverse", centre[2])
    assert cut.mask.any()
    rows, cols = np.nonzero(cut.mask)
    points = cut.pixel_to_atlas(rows, cols)
    assert np.allclose(points[:, 2], centre[2])
    assert np.all(atlas.region_of(points) // 10 == 1)
    # columns run along +x (patient right on the image left), rows along +y (depth)
    assert np.allclose(cut.col_dir, [1, 0, 0]) and np.allclose(cut.row_dir, [0, 1, 0])
    assert np.allclose(cut.atlas_to_pixel(points), np.stack([rows, cols], 1))
    area = cut.mask.sum() * cut.spacing_mm**2
    assert 120 < area < 320  # ellipse of 15-20 x 13-20 mm


def test_longitudinal_section_has_cranial_on_the_left(atlas):
    centre = np.asarray(atlas.lobe_axes[2]["centre_mm"])
    cut = atlas.section("L", "longitudinal", centre[0])
    rows, cols = np.nonzero(cut.mask)
    points = cut.pixel_to_atlas(rows, cols)
    assert np.allclose(points[:, 0], centre[0])
    left_cols = points[cols < np.percentile(cols, 10)]
    right_cols = points[cols > np.percentile(cols, 90)]
    assert left_cols[:, 2].mean() > right_cols[:, 2].mean()
    length = np.ptp(points[:, 2])
    assert 35 < length < 60


def test_section_levels_share_one_layout_and_isthmus_option(atlas):
    a = atlas.section("L", "transverse", 0.0)
    b = atlas.section("L", "transverse", 10.0)
    assert a.mask.shape == b.mask.shape and np.allclose(a.origin_mm[:2], b.origin_mm[:2])
    with_isthmus = atlas.section("L", "transverse", 0.0, include_isthmus=True)
    assert with_isthmus.mask.sum() > a.mask.sum()


@pytest.mark.parametrize("side, view", [("X", "transverse"), ("R", "oblique")])
def test_section_rejects_unknown_side_or_view(atlas, side, view):
    with pytest.raises(InputError, match="unknown"):
        atlas.section(side, view, 0.0)
