"""The few statistics the report needs over runs repeated with other seeds: mean, sample
standard deviation, Welch's t-test and the 95% interval of a mean, from the standard library
and SciPy (no torch). scipy.stats is imported where it is used: it takes about a second,
which `python -m cnnbench.report --help` should not pay.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs)


def std(xs: list[float]) -> float:
    """The sample standard deviation (n - 1 in the denominator); 0 for a single value."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


@dataclass
class Welch:
    t: float
    df: float
    p: float  # two-sided


def welch(a: list[float], b: list[float]) -> Welch | None:
    """Welch's t-test of equal means without assuming equal variances; None with fewer than
    two values on a side. Two sets without any spread differ (p = 0) unless equal (p = 1),
    where SciPy answers nan."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = mean(a) - mean(b)
    if std(a) == std(b) == 0:
        return Welch(math.copysign(math.inf, diff) if diff else 0.0, math.nan, 0.0 if diff else 1.0)
    from scipy.stats import ttest_ind

    result = ttest_ind(a, b, equal_var=False)
    return Welch(float(result.statistic), float(result.df), float(result.pvalue))


def interval95(xs: list[float]) -> tuple[float, float] | None:
    """The 95% confidence interval of the mean (Student's t); None for fewer than 2 values."""
    if len(xs) < 2:
        return None
    from scipy.stats import t

    half = float(t.ppf(0.975, len(xs) - 1)) * std(xs) / math.sqrt(len(xs))
    return mean(xs) - half, mean(xs) + half
