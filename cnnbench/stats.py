"""The few statistics the report needs over runs repeated with other seeds: mean, sample
standard deviation, Welch's t-test and Student's t quantiles. Pure Python (no scipy, no
torch): the t distribution's CDF through the regularised incomplete beta function, evaluated by
its continued fraction (Numerical Recipes, 3rd ed., section 6.4; Lentz's method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def std(xs: list[float]) -> float:
    """The sample standard deviation (n - 1 in the denominator); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df need not be whole)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The q-quantile (0.5 < q < 1) of Student's t, by bisection on the CDF."""
    low, high = 0.0, 1.0
    while 1 - t_two_sided_p(high, df) / 2 < q:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if 1 - t_two_sided_p(mid, df) / 2 < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2


@dataclass
class Welch:
    t: float
    df: float
    p: float  # two-sided


def welch(a: list[float], b: list[float]) -> Welch | None:
    """Welch's t-test of equal means without assuming equal variances; None with fewer than
    two values on a side. Two sets without any spread differ (p = 0) unless equal (p = 1)."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = std(a) ** 2 / len(a), std(b) ** 2 / len(b)
    diff = mean(a) - mean(b)
    if va + vb == 0:
        return Welch(math.copysign(math.inf, diff) if diff else 0.0, math.nan, 0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Welch(t, df, t_two_sided_p(t, df))


def interval95(xs: list[float]) -> tuple[float, float] | None:
    """The 95% confidence interval of the mean (Student's t); None for fewer than 2 values."""
    if len(xs) < 2:
        return None
    half = t_quantile(0.975, len(xs) - 1) * std(xs) / math.sqrt(len(xs))
    return mean(xs) - half, mean(xs) + half
