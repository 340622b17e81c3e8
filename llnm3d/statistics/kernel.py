"""Kernel-smoothed risk at registered nodule centres (the baseline of the spatial model).

At a voxel ``v`` the risk is the Nadaraya-Watson average of the outcomes of the nodules'
registered centres ``c_i`` with a Gaussian kernel ``K(d) = exp(-d^2 / (2 sigma^2))``:
``p(v) = sum K(v - c_i) y_i / sum K(v - c_i)``, one bandwidth for numerator and
denominator (as the relative-risk surfaces of spatial epidemiology), chosen among
:data:`BANDWIDTHS_MM` by leave-one-patient-out cross-validated log-likelihood. Sums are
computed on the atlas grid (centres splatted trilinearly, then Gaussian-filtered); the 95 %
interval is Jeffreys' on Kish's effective number of nodules ``(sum K)^2 / sum K^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from .inference import jeffreys_interval

BANDWIDTHS_MM = (1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
PRIOR_NODULES = 1.0  # keeps a held-out prediction off 0 and 1 when its neighbours all agree


@dataclass
class KernelFit:
    """A kernel risk estimate on the atlas grid.

    Attributes
    ----------
    bandwidth_mm : float
        Chosen Gaussian sigma.
    cv_log_loss : float
        Mean leave-one-patient-out log loss at that bandwidth (lower is better).
    scores : dict of float -> float
        Log loss of every bandwidth tried.
    maps : dict of str -> ndarray, shape of the atlas
        ``probability``, ``probability_ci_low``, ``probability_ci_high``, ``effective_n``.
    """

    bandwidth_mm: float
    cv_log_loss: float
    scores: dict
    maps: dict


def _splat(points_vox: np.ndarray, values: np.ndarray, shape) -> np.ndarray:
    """Trilinear splat of point values onto a grid; points as (k, j, i) voxel coordinates."""
    grid = np.zeros(shape)
    base = np.floor(points_vox).astype(int)
    frac = points_vox - base
    for corner in np.ndindex(2, 2, 2):
        offset = np.array(corner)
        weight = np.prod(np.where(offset, frac, 1 - frac), axis=1)
        index = base + offset
        ok = np.all((index >= 0) & (index < np.array(shape)), axis=1)
        np.add.at(grid, tuple(index[ok].T), weight[ok] * values[ok])
    return grid


def _kernel_sums(grid: np.ndarray, sigma_mm: float, spacing_mm: float) -> np.ndarray:
    """Unnormalised Gaussian kernel sums ``sum_i K(v - c_i) * value_i`` at every voxel."""
    sigma = sigma_mm / spacing_mm
    return ndimage.gaussian_filter(grid, sigma, mode="constant", truncate=4.0) * (
        np.sqrt(2 * np.pi) * sigma) ** 3


def fit_kernel(centres_mm: np.ndarray, y: np.ndarray, patients: np.ndarray, origin_mm,
               spacing_mm: float, shape, bandwidths_mm=BANDWIDTHS_MM) -> KernelFit:
    """Kernel risk map with its bandwidth chosen by leave-one-patient-out cross-validation.

    Parameters
    ----------
    centres_mm : ndarray, shape (n, 3)
        Registered nodule centres (x, y, z) in atlas mm.
    y : ndarray, shape (n,)
        Outcomes (0/1).
    patients : ndarray, shape (n,)
        Patient of each nodule (held out together).
    origin_mm, spacing_mm, shape
        The atlas grid (shape (nz, ny, nx)).
    """
    y = np.asarray(y, float)
    vox = ((np.asarray(centres_mm, float) - np.asarray(origin_mm)) / spacing_mm)[:, ::-1]
    ones, events = _splat(vox, np.ones(len(y)), shape), _splat(vox, y, shape)
    rate = y.mean()
    codes = pd.factorize(pd.Series(patients))[0]
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(codes.max() + 1))
    scores = {}
    for sigma in bandwidths_mm:
        total = ndimage.map_coordinates(_kernel_sums(ones, sigma, spacing_mm), vox.T, order=1)
        positive = ndimage.map_coordinates(_kernel_sums(events, sigma, spacing_mm), vox.T,
                                           order=1)
        own_total, own_positive = _own_patient_sums(centres_mm, y, order, starts, codes, sigma)
        held_total = np.maximum(total - own_total, 0.0)
        held_positive = np.clip(positive - own_positive, 0.0, held_total)
        p = (held_positive + PRIOR_NODULES * rate) / (held_total + PRIOR_NODULES)
        scores[float(sigma)] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    sigma = min(scores, key=scores.__getitem__)
    total = _kernel_sums(ones, sigma, spacing_mm)
    positive = _kernel_sums(events, sigma, spacing_mm)
    squares = _kernel_sums(ones, sigma / np.sqrt(2), spacing_mm)  # K^2 is a kernel of sigma/√2
    with np.errstate(divide="ignore", invalid="ignore"):
        probability = (positive + PRIOR_NODULES * rate) / (total + PRIOR_NODULES)
        effective_n = total**2 / squares
    low, high = jeffreys_interval(np.nan_to_num(probability * effective_n),
                                  np.nan_to_num(effective_n))
    return KernelFit(sigma, scores[sigma], scores, {
        "probability": probability, "probability_ci_low": low, "probability_ci_high": high,
        "effective_n": np.nan_to_num(effective_n)})


def _own_patient_sums(centres_mm, y, order, starts, codes, sigma):
    """Kernel sums at each nodule's centre over the nodules of its own patient (itself
    included), exact."""
    centres = np.asarray(centres_mm, float)
    sizes = np.diff(np.append(starts, len(codes)))
    own_total, own_positive = np.zeros(len(y)), np.zeros(len(y))
    for size in np.unique(sizes):
        groups = np.flatnonzero(sizes == size)
        members = order[starts[groups][:, None] + np.arange(size)]  # (g, size)
        pts = centres[members]
        d2 = np.sum((pts[:, :, None, :] - pts[:, None, :, :]) ** 2, axis=-1)
        kernel = np.exp(-d2 / (2 * sigma**2))
        own_total[members] = kernel.sum(axis=2)
        own_positive[members] = np.einsum("gab,gb->ga", kernel, y[members])
    return own_total, own_positive
