"""Running one function over many cases, in worker processes or on a Dask cluster, with a
progress bar.

Every stage that works case by case (phantom patients, image loading, registration) goes
through :func:`map_cases`, so they share one convention: the function returns
``(key, outcome)`` where a ``str`` outcome is the reason the case failed; failures are collected
by key and the other cases go on. Results come back in job order whatever ran them, so the
output of a stage does not depend on where it ran.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import cast

from tqdm.auto import tqdm

from .io import InputError


def map_cases(function: Callable, jobs: list, workers: int | None = None,
              progress: bool = True, desc: str = "", unit: str = "case",
              initializer: Callable | None = None, initargs: tuple = (),
              chunksize: int = 8, scheduler: str | None = None
              ) -> tuple[list, list[tuple[str, str]]]:
    """Apply ``function`` to each job, in job order.

    Parameters
    ----------
    function : callable
        Picklable; ``function(job) -> (key, outcome)``, ``outcome`` a ``str`` on failure.
    jobs : list
    workers : int, optional
        Processes (default: all cores, at most one per job); 1 runs in this process. With
        ``scheduler="local"``, the number of workers of the local Dask cluster.
    initializer, initargs
        Run once per worker (and once here when ``workers == 1``) before any job.
    scheduler : str or dask.distributed.Client, optional
        Run on Dask distributed instead: the address of a running scheduler
        (``tcp://host:8786``; its workers must see the same files), ``"local"`` for a
        ``LocalCluster`` of ``workers`` single-threaded processes started for this call, or a
        client from :func:`dask_session` (shared by several calls).

    Returns
    -------
    results : list of outcome
        The successful outcomes, in job order.
    failures : list of (key, reason)
    """
    if scheduler is not None:
        return _split(_map_dask(function, jobs, scheduler, workers, progress, desc, unit,
                                initializer, initargs, chunksize))
    return _split(_map_local(function, jobs, workers, progress, desc, unit, initializer,
                             initargs, chunksize))


def _map_local(function, jobs, workers, progress, desc, unit, initializer, initargs,
               chunksize) -> Iterator:
    """Outcomes of ``function`` over ``jobs`` in local processes (or here), in job order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
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
        for outcome in outcomes:
            yield outcome
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _split(outcomes: Iterable) -> tuple[list, list[tuple[str, str]]]:
    results, failures = [], []
    for key, outcome in outcomes:
        if isinstance(outcome, str):
            failures.append((key, outcome))
        else:
            results.append(outcome)
    return results, failures


_DASK_TOKEN: list[str] = [""]


def _run_chunk(chunk: list, function: Callable, setup: tuple) -> list:
    """Run a chunk of jobs on a Dask worker, initialising the worker once per map call."""
    token, initializer, initargs = setup
    if _DASK_TOKEN[0] != token:
        if initializer is not None:
            initializer(*initargs)
        _DASK_TOKEN[0] = token
    return [function(job) for job in chunk]


@contextlib.contextmanager
def dask_session(scheduler, workers: int | None = None) -> Iterator:
    """One Dask client for several :func:`map_cases` calls: yields what to pass to them as
    ``scheduler`` (a connected client; None when ``scheduler`` is None), so a ``"local"``
    cluster starts once, not once per call."""
    if scheduler is None or not isinstance(scheduler, str):
        yield scheduler
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dask is a dependency
        raise InputError("running on a Dask scheduler needs dask[distributed]") from None
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None)
    try:
        client = Client(cluster or scheduler, timeout="30s")
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _map_dask(function, jobs, scheduler, workers, progress, desc, unit, initializer, initargs,
              chunksize) -> list:
    """Outcomes of ``function`` over ``jobs`` on a Dask cluster, in job order."""
    from dask.distributed import as_completed

    chunks = [jobs[start:start + chunksize] for start in range(0, len(jobs), chunksize)]
    outcomes: list[list | None] = [None] * len(chunks)
    with dask_session(scheduler, workers) as client:
        bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress)
        try:
            setup = client.scatter((uuid.uuid4().hex, initializer, initargs), broadcast=True)
            futures = client.map(_run_chunk, chunks, function=function, setup=setup,
                                 pure=False)
            index = {future.key: position for position, future in enumerate(futures)}
            for future in as_completed(futures):
                result = future.result()
                outcomes[index[future.key]] = result
                bar.update(len(result))
        finally:
            bar.close()
    # as_completed yields every future (or raises), so no chunk is left None.
    done = cast("list[list]", outcomes)
    return [outcome for chunk in done for outcome in chunk]
