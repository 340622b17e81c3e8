import numpy as np
import pytest

from llnm3d import Atlas, Stats, aggregate, load_stats, register
from llnm3d.export import FIELD_MAPS, REQUIRED_MAPS
from llnm3d.models.train import TrainSettings, train
from llnm3d.phantom import make_phantom


@pytest.fixture(scope="session")
def atlas() -> Atlas:
    return Atlas.default()


@pytest.fixture(scope="session")
def cohort(tmp_path_factory, atlas):
    """A small rendered phantom cohort shared by the tests that only read it."""
    return make_phantom(tmp_path_factory.mktemp("cohort"), 12, seed=7, atlas=atlas,
                        workers=2, progress=False)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def model_dir(cohort, tmp_path_factory):
    """Both views trained briefly on the small cohort (untrained-quality, real code path)."""
    folder = tmp_path_factory.mktemp("models")
    for view in ("transverse", "longitudinal"):
        train(cohort.out_dir / "manifest.csv", view, folder / view,
              TrainSettings(epochs=1, batch_size=8, warmup_epochs=1), progress=False, workers=1)
        for suffix in (".safetensors", ".json"):
            (folder / view / f"model{suffix}").rename(folder / f"{view}{suffix}")
    return folder


@pytest.fixture(scope="session")
def registered(cohort, atlas, tmp_path_factory):
    """The small cohort registered with a uniform heatmap (0.5) on every image."""
    heat = tmp_path_factory.mktemp("heat")
    (heat / "heatmaps").mkdir()
    for case in cohort.manifest["case_id"]:
        np.savez(heat / "heatmaps" / f"{case}.npz", heatmap=np.full((256, 256), 0.5, np.float32),
                 probability=np.float32(0.4))
    return register(cohort.out_dir / "manifest.csv", heatmaps=heat, atlas=atlas,
                    out_dir=tmp_path_factory.mktemp("registered"), workers=2, progress=False)


@pytest.fixture(scope="session")
def stats_dir(registered, atlas, tmp_path_factory):
    """An `llnm3d aggregate` folder of the small cohort (mask weights, min-cases 2), for the
    export, site and browser tests (read only)."""
    out = tmp_path_factory.mktemp("stats")
    aggregate(registered, atlas=atlas, out_dir=out, weight="mask", min_cases=2,
              permutations=20, progress=False)
    return out


@pytest.fixture(scope="session")
def publishable_stats_dir(stats_dir, tmp_path_factory):
    """The shared stats (min-cases 2) with three times the coverage, as from a cohort large
    enough to publish (the small cohort touches no voxel with 5 nodules, the publishing floor):
    voxels of 2 nodules reach the floor (as 6), those of 1 (as 3) do not. Keeps the maps the
    export needs and the optional ones the viewer shows."""
    stats = load_stats(stats_dir)
    volumes = {name: stats.volumes[name] for name in (*REQUIRED_MAPS, *FIELD_MAPS)
               if name in stats.volumes}
    volumes["n_nodules"] = 3 * volumes["n_nodules"]
    tables = [table.assign(nodules=3 * table["nodules"], events=3 * table["events"])
              for table in (stats.regions, stats.capsule_distance)]
    return Stats(volumes, stats.origin_mm, stats.spacing_mm, *tables,
                 stats.summary | {"maps": list(volumes)}).save(
        tmp_path_factory.mktemp("publishable_stats"))
