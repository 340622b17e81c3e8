"""Synthetic thyroid ultrasound cohorts with planted, known truth."""

from .cohort import Phantom, make_phantom, sample_truth
from .deform import PatientDeformation
from .risk import RiskSpec

__all__ = ["Phantom", "PatientDeformation", "RiskSpec", "make_phantom", "sample_truth"]
