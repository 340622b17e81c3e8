"""llnm3d: 3D spatial statistics of lateral lymph node metastasis (LLNM) in thyroid cancer."""

__version__ = "0.1.0"

from .atlas import Atlas, Section  # noqa: E402
from .registration import Registered, load_registered, register  # noqa: E402
from .statistics import Stats, aggregate, load_stats  # noqa: E402

__all__ = ["Atlas", "Registered", "Section", "Stats", "__version__", "aggregate",
           "load_registered", "load_stats", "register"]
