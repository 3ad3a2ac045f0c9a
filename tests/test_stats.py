"""sbattn.stats against textbook values and closed forms."""
import math

import pytest

from sbattn.experiments.stats import betainc, format_ci, mean, sample_std, t_cdf, t_quantile, welch


@pytest.mark.parametrize("dof, expected", [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042),
                                           (120, 1.980)])
def test_t_quantile_matches_the_textbook_table(dof, expected):
    assert t_quantile(0.975, dof) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_other_levels_and_symmetry():
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=5e-4)
    assert t_quantile(0.995, 4) == pytest.approx(4.604, abs=5e-4)
    assert t_quantile(0.025, 10) == pytest.approx(-2.228, abs=5e-4)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.95996, abs=1e-4)  # the normal limit


def test_t_cdf_closed_forms():
    for t in (-3.0, -0.4, 0.0, 1.0, 7.5):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 3) == 0.0


def test_quantile_inverts_cdf_for_fractional_dof():
    for dof in (1.3, 4.7, 24.9):
        for p in (0.6, 0.9, 0.975, 0.999):
            assert t_cdf(t_quantile(p, dof), dof) == pytest.approx(p, abs=1e-10)


def test_betainc_edges_and_a_closed_form():
    assert betainc(2, 3, 0.0) == 0.0 and betainc(2, 3, 1.0) == 1.0
    x = 0.3  # I_x(1, b) = 1 - (1 - x)^b
    assert betainc(1, 4, x) == pytest.approx(1 - (1 - x) ** 4, abs=1e-13)
    assert betainc(4, 1, 0.9) == pytest.approx(0.9 ** 4, abs=1e-13)  # the symmetric branch
    # Each bound apart, by its own message (lgamma(0) would raise a ValueError of its own, naming nothing).
    for a, b, x, words in ((0, 1, 0.5, "a, b > 0"), (1, 0, 0.5, "a, b > 0"), (1, 1, -0.1, "0 <= x <= 1"),
                           (1, 1, 1.1, "0 <= x <= 1")):
        with pytest.raises(ValueError, match=f"needs {words}"):
            betainc(a, b, x)


def test_mean_and_sample_std():
    assert mean([1.0, 2.0, 6.0]) == 3.0
    assert sample_std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))  # n - 1, not n
    assert sample_std([92.27]) is None


def test_welch_worked_example():
    # Wikipedia, "Welch's t-test", example 1: t = -2.46, dof = 24.99, p = 0.021. By hand:
    # means 20.82 and 22.9867 (diff -2.1667); s^2 = 7.8674 and 3.8127, se = sqrt((7.8674 + 3.8127) / 15) = 0.8824;
    # t_{0.975, 24.99} = 2.0596, so the 95% interval is -2.1667 +- 1.8174 = [-3.984, -0.349].
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    d = welch(a, b)
    assert d.estimate == pytest.approx(-2.1667, abs=1e-4)
    assert d.std_error == pytest.approx(0.8824, abs=1e-4)
    assert d.estimate / d.std_error == pytest.approx(-2.455, abs=1e-3)
    assert d.dof == pytest.approx(24.99, abs=0.01)
    assert d.t_critical == pytest.approx(2.0596, abs=1e-4)
    assert (d.low, d.high) == (pytest.approx(-3.984, abs=1e-3), pytest.approx(-0.349, abs=1e-3))
    assert 2 * t_cdf(-abs(d.estimate / d.std_error), d.dof) == pytest.approx(0.021, abs=5e-4)
    assert format_ci(d) == "[-3.98, -0.35]"


def test_welch_unequal_sizes_small_example():
    # a = [1, 2, 3] (s^2 = 1), b = [2, 4, 6, 8] (s^2 = 20/3): va = 1/3, vb = 5/3, se^2 = 2,
    # dof = 4 / ((1/9) / 2 + (25/9) / 3) = 4.0755; t_{0.975, 4.0755} = 2.7563 (by Simpson's rule on the density).
    d = welch([1, 2, 3], [2, 4, 6, 8])
    assert d.estimate == pytest.approx(-3.0)
    assert d.std_error == pytest.approx(math.sqrt(2))
    assert d.dof == pytest.approx(4 / (1 / 18 + 25 / 27))
    assert d.t_critical == pytest.approx(2.7563, abs=1e-4)
    assert d.high == pytest.approx(-3 + d.t_critical * math.sqrt(2))


def test_welch_without_an_interval_says_na():
    d = welch([92.3], [92.1, 92.5])
    assert d.estimate == pytest.approx(-0.0)
    assert not d.has_ci and d.low is None and d.dof is None
    assert format_ci(d) == "n/a"


def test_welch_constant_groups_give_a_zero_width_interval():
    d = welch([90.0, 90.0], [89.0, 89.0])
    assert d.has_ci and d.low == d.high == pytest.approx(1.0)
