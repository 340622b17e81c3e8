"""Running one function over many cases, in worker processes or on a Dask cluster, with a
progress bar.

Every stage that works case by case (phantom patients, image loading, registration, blocks
of patches) goes through :func:`map_cases`, so they share one convention: a worker function
receives what every job shares (its ``context``, sent once per worker process) and one job
(a small frozen dataclass), and returns its result, or a :class:`Failure` naming the case
and why it failed; failures are collected and the other cases go on. Results come back in job
order whatever ran them, so the output of a stage does not depend on where it ran.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from tqdm.auto import tqdm

from .io import InputError

C = TypeVar("C")
J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class Failure:
    """A case that failed: its id (a case, nodule, patient or block) and the reason, as the
    user reads them."""

    id: str
    reason: str


def map_cases(function: Callable[[C, J], R | Failure], jobs: Sequence[J],
              workers: int | None = None, progress: bool = True, desc: str = "",
              unit: str = "case", *, context: C, setup: Callable[[], object] | None = None,
              chunksize: int = 8, scheduler: str | None = None
              ) -> tuple[list[R], list[Failure]]:
    """Apply ``function`` to each job, in job order.

    Parameters
    ----------
    function : callable
        Picklable; ``function(context, job)`` returns the job's result, or a
        :class:`Failure` (the other jobs go on).
    jobs : sequence
    workers : int, optional
        Processes (default: all cores, at most one per job); 1 runs in this process. With
        ``scheduler="local"``, the number of workers of the local Dask cluster.
    context
        Picklable; what every job shares (an atlas, settings), sent once to each worker.
    setup : callable, optional
        Picklable; run once per worker process (and once here when ``workers == 1``) before
        any job, for per-process settings such as thread limits.
    scheduler : str or dask.distributed.Client, optional
        Run on Dask distributed instead: the address of a running scheduler
        (``tcp://host:8786``; its workers must see the same files), ``"local"`` for a
        ``LocalCluster`` of ``workers`` single-threaded processes started for this call, or a
        client from :func:`dask_session` (shared by several calls).

    Returns
    -------
    results : list
        The successful results, in job order.
    failures : list of Failure
        In job order.
    """
    if scheduler is not None:
        return _split(_map_dask(function, jobs, scheduler, workers, progress, desc, unit,
                                context, setup, chunksize))
    return _split(_map_local(function, jobs, workers, progress, desc, unit, context, setup,
                             chunksize))


# A worker process's context, installed once by _install: module state, so each job sent to
# the process carries only itself.
_CONTEXT: list = [None]


def _install(context, setup: Callable[[], object] | None) -> None:
    if setup is not None:
        setup()
    _CONTEXT[0] = context


def _run_installed(function: Callable, job):
    return function(_CONTEXT[0], job)


def _map_local(function, jobs, workers, progress, desc, unit, context, setup,
               chunksize) -> Iterator:
    """Outcomes of ``function`` over ``jobs`` in local processes (or here), in job order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress)
    pool = None
    if workers == 1:
        if setup is not None:
            setup()
        outcomes: Iterable = (function(context, job) for job in jobs)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_install,
                                                      initargs=(context, setup))
        outcomes = pool.map(functools.partial(_run_installed, function), jobs,
                            chunksize=chunksize)
    try:
        for outcome in outcomes:
            yield outcome
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _split(outcomes: Iterable) -> tuple[list, list[Failure]]:
    results: list = []
    failures: list[Failure] = []
    for outcome in outcomes:
        (failures if isinstance(outcome, Failure) else results).append(outcome)
    return results, failures


_DASK_TOKEN: list[str] = [""]


def _run_chunk(chunk: list, function: Callable, shared: tuple) -> list:
    """Run a chunk of jobs on a Dask worker, installing the context once per map call."""
    token, context, setup = shared
    if _DASK_TOKEN[0] != token:
        _install(context, setup)
        _DASK_TOKEN[0] = token
    return [_run_installed(function, job) for job in chunk]


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


def _map_dask(function, jobs, scheduler, workers, progress, desc, unit, context, setup,
              chunksize) -> list:
    """Outcomes of ``function`` over ``jobs`` on a Dask cluster, in job order."""
    from dask.distributed import as_completed

    chunks = [jobs[start:start + chunksize] for start in range(0, len(jobs), chunksize)]
    outcomes: list[list | None] = [None] * len(chunks)
    with dask_session(scheduler, workers) as client:
        bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress)
        try:
            shared = client.scatter((uuid.uuid4().hex, context, setup), broadcast=True)
            futures = client.map(_run_chunk, chunks, function=function, shared=shared,
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
