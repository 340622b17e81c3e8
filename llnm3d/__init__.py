"""llnm3d: 3D spatial statistics of lateral lymph node metastasis (LLNM) in thyroid cancer.

The names below load on first use (PEP 562), so ``import llnm3d`` and ``llnm3d --help`` do not
pay for registration, statistics and their dependencies until they are needed.
"""

from importlib import import_module

from ._version import __version__

_LAZY = {
    "Atlas": ".atlas", "Section": ".atlas",
    "Registered": ".registration", "load_registered": ".registration",
    "register": ".registration",
    "Stats": ".statistics", "aggregate": ".statistics", "load_stats": ".statistics",
}

__all__ = ["Atlas", "Registered", "Section", "Stats", "__version__", "aggregate",
           "load_registered", "load_stats", "register"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
