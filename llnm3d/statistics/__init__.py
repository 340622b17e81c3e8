"""Voxelwise metastasis-probability statistics (``llnm3d aggregate``).

- :mod:`.accumulate`: streaming, associative voxelwise sums over registered patches.
- :mod:`.inference`: intervals, the proportion test, the OLS t-test, FDR, permutations.
- :mod:`.tables`: risk per region and per capsule-distance bin.
- :mod:`.maps`: the pipeline, the :class:`Stats` result, saving and loading.
"""

from .maps import MAP_DESCRIPTIONS, Stats, aggregate, load_stats

__all__ = ["MAP_DESCRIPTIONS", "Stats", "aggregate", "load_stats"]
