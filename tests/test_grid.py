import json

import numpy as np
import pytest

from llnm3d.grid import Grid, grid_step

GRID = Grid((4, 5, 6), (-2.0, 1.0, 10.0), 0.5)


def test_voxel_world_round_trip():
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(0, n, 50) for n in (6, 5, 4)], axis=1)
    points = GRID.to_world(ijk)
    np.testing.assert_array_equal(points[0], [-2.0 + 0.5 * ijk[0, 0], 1.0 + 0.5 * ijk[0, 1],
                                              10.0 + 0.5 * ijk[0, 2]])
    np.testing.assert_array_equal(GRID.to_voxel(points), ijk)
    np.testing.assert_allclose(GRID.voxel_coordinates(points), ijk)


def test_to_voxel_is_the_nearest_voxel_and_takes_one_point():
    # 0.2 mm and 0.3 mm off voxel (1, 2, 3), i.e. 0.4 and 0.6 of a voxel: rounds to 1 and 4.
    np.testing.assert_array_equal(GRID.to_voxel([-1.5 + 0.2, 2.0, 11.5 + 0.3]), [[1, 2, 4]])
    assert GRID.to_world([0, 0, 0]).shape == (1, 3)


def test_sample_takes_the_nearest_voxel_and_nan_off_the_grid():
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    points = np.array([
        [-2.0, 1.0, 10.0],              # voxel (0, 0, 0)
        [-2.0 + 2.6, 1.0 + 1.1, 11.4],  # nearest (5, 2, 3): volume[3, 2, 5]
        [-2.0 - 0.3, 1.0, 10.0],        # more than half a voxel before x = 0
        [-2.0 + 2.7, 1.0, 10.0],        # beyond the last x (index 5.4 rounds to 5: on it)
        [-2.0 + 2.8, 1.0, 10.0],        # index 5.6 rounds to 6: off
        [-2.0, 1.0, 10.0 + 2.0],        # z index 4: off (nz = 4)
    ])
    values = GRID.sample(volume, points)
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [0.0, volume[3, 2, 5], np.nan, volume[0, 0, 5],
                                           np.nan, np.nan])
    np.testing.assert_array_equal(GRID.contains(points), [True, True, False, True, False, False])
    labels = GRID.sample(volume.astype(np.uint8), points, fill=0, dtype=np.uint8)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, volume[3, 2, 5], 0, 5, 0, 0])


def test_subsampled_grid_is_the_grid_of_the_strided_volume():
    volume = np.random.default_rng(1).random(GRID.shape)
    coarse = GRID.subsampled(4)
    strided = volume[::4, ::4, ::4]
    assert coarse.shape == strided.shape == (1, 2, 2)
    assert coarse.origin_mm == GRID.origin_mm and coarse.spacing_mm == 2.0
    k, j, i = np.nonzero(np.ones(strided.shape, bool))
    points = coarse.to_world(np.stack([i, j, k], axis=1))
    np.testing.assert_array_equal(GRID.sample(volume, points), strided.ravel())
    assert GRID.subsampled(1) == GRID
    with pytest.raises(ValueError):
        GRID.subsampled(0)


def test_axes_are_the_voxel_centres():
    x, y, z = GRID.axes_mm()
    np.testing.assert_array_equal(x, -2.0 + 0.5 * np.arange(6))
    np.testing.assert_array_equal(y, 1.0 + 0.5 * np.arange(5))
    np.testing.assert_array_equal(z, 10.0 + 0.5 * np.arange(4))


def test_signature_is_plain_json_and_round_trips():
    grid = Grid(np.array([4, 5, 6]), np.array([-2.0, 1.0, 10.0], np.float64), np.float64(0.5))
    signature = grid.signature()
    assert json.dumps(signature) == ('{"shape_zyx": [4, 5, 6], "origin_mm": [-2.0, 1.0, 10.0], '
                                     '"spacing_mm": 0.5}')
    assert grid == GRID and hash(grid) == hash(GRID)
    assert Grid.from_signature(json.loads(json.dumps(signature))) == GRID


def test_atlas_grid_matches_the_atlas(atlas):
    grid = atlas.grid
    assert grid.shape == atlas.labels.shape and grid.spacing_mm == atlas.spacing_mm
    assert grid.signature() == {"shape_zyx": [int(n) for n in atlas.labels.shape],
                                "origin_mm": [float(o) for o in atlas.origin_mm],
                                "spacing_mm": float(atlas.spacing_mm)}
    k, j, i = np.nonzero(atlas.labels)
    ijk = np.stack([i, j, k], axis=1)[::97]
    np.testing.assert_array_equal(atlas.region_of(grid.to_world(ijk)), atlas.labels[k, j, i][::97])


@pytest.mark.parametrize(("spacing", "base", "step"), [
    (1.0, 0.5, 2), (1.5, 0.5, 3), (0.2, 0.5, 1), (1.2, 0.5, 2), (1.3, 0.5, 3), (10.0, 2.0, 5)])
def test_grid_step(spacing, base, step):
    assert grid_step(spacing, base) == step
