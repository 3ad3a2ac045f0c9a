"""Small-sample statistics for comparing runs: mean, sample std, Welch's t interval, without scipy.

Student's t distribution is computed from the regularized incomplete beta function (Lentz's continued
fraction, as in Numerical Recipes 6.4) and its quantile by bisection, which is plenty for a handful of seeds.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["mean", "sample_std", "betainc", "t_cdf", "t_quantile", "Difference", "welch", "format_ci"]


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    """Standard deviation with Bessel's correction (n - 1); None for fewer than two values."""
    return _std(values) if len(values) >= 2 else None


def _std(values: Sequence[float]) -> float:
    """sample_std of two values or more."""
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), modified Lentz; converges fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            return result
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    # The symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the fraction in its fast-converging range.
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with `dof` (> 0, not necessarily whole) degrees of freedom."""
    if not dof > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(dof / 2.0, 0.5, dof / (dof + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The t with P(T <= t) = p, by bisection on t_cdf (to ~1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        low, high = high, high * 2.0
        if high > 1e300:
            raise ArithmeticError(f"t quantile out of range for p={p}, dof={dof}")
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, dof) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with Welch's confidence interval; the interval fields are None when n < 2 in a group."""

    estimate: float
    n_a: int
    n_b: int
    confidence: float
    std_error: float | None = None
    dof: float | None = None
    t_critical: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def has_ci(self) -> bool:
        return self.low is not None

    def to_dict(self) -> dict:
        return asdict(self)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Difference:
    """Welch's t interval for mean(a) - mean(b), dof by Welch-Satterthwaite; no interval if a group has one value."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    estimate = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(estimate, len(a), len(b), confidence)
    va, vb = _std(a) ** 2 / len(a), _std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # both groups constant: the dof is 0/0, but the interval has zero width whatever it is
        dof = float(len(a) + len(b) - 2)
    else:
        dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = t_quantile(0.5 + confidence / 2.0, dof)
    return Difference(estimate, len(a), len(b), confidence, se, dof, t, estimate - t * se, estimate + t * se)


def format_ci(diff: Difference, digits: int = 2) -> str:
    """'[-0.52, +1.24]', or 'n/a' without an interval."""
    if not diff.has_ci:
        return "n/a"
    return f"[{diff.low:+.{digits}f}, {diff.high:+.{digits}f}]"
