"""Running one function over many cases, in worker processes, with a progress bar.

Every stage that works case by case (phantom patients, image loading, and later registration)
goes through :func:`map_cases`, so they share one convention: the function returns
``(key, outcome)`` where a ``str`` outcome is the reason the case failed; failures are collected
by key and the other cases go on.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Iterable

from tqdm.auto import tqdm


def map_cases(function: Callable, jobs: list, workers: int | None = None,
              progress: bool = True, desc: str = "", unit: str = "case",
              initializer: Callable | None = None, initargs: tuple = (),
              chunksize: int = 8) -> tuple[list, list[tuple[str, str]]]:
    """Apply ``function`` to each job, in job order.

    Parameters
    ----------
    function : callable
        Picklable; ``function(job) -> (key, outcome)``, ``outcome`` a ``str`` on failure.
    jobs : list
    workers : int, optional
        Processes (default: all cores, at most one per job); 1 runs in this process.
    initializer, initargs
        Run once per worker (and once here when ``workers == 1``) before any job.

    Returns
    -------
    results : list of outcome
        The successful outcomes, in job order.
    failures : list of (key, reason)
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    results, failures = [], []
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress)
    pool = None
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        outcomes: Iterable = map(function, jobs)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=initializer,
                                                      initargs=initargs)
        outcomes = pool.map(function, jobs, chunksize=chunksize)
    try:
        for key, outcome in outcomes:
            if isinstance(outcome, str):
                failures.append((key, outcome))
            else:
                results.append(outcome)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results, failures
