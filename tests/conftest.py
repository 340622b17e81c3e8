import numpy as np
import pytest

from llnm3d import Atlas
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
