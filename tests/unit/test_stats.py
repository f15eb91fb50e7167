"""Bootstrap intervals cover the mean, shrink with n and are deterministic for a seed."""
import math

import numpy as np
import pandas as pd
import pytest

from vlminterp.stats import bootstrap_ci, grouped_mean_ci, wilson_interval


def test_interval_contains_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(1)
    small = rng.binomial(1, 0.3, size=50)
    large = rng.binomial(1, 0.3, size=5000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3


def test_interval_is_deterministic_and_handles_degenerate_input():
    values = [0, 1, 1, 0, 1]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_ci([])))


def test_grouped_mean_ci_one_row_per_group():
    df = pd.DataFrame({"cond": ["a"] * 4 + ["b"] * 2, "hit": [1, 1, 0, 1, 0, 0]})
    out = grouped_mean_ci(df, by=["cond"], value="hit").set_index("cond")
    assert out.loc["a", "mean"] == 0.75 and out.loc["a", "n"] == 4
    assert out.loc["b", "low"] == 0.0 and out.loc["b", "high"] == 0.0


def test_wilson_interval_known_values():
    """Newcombe (1998), Stat. Med. 17:857, Table I (score method without continuity correction)."""
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_every_interval_contains_its_estimate_at_0_and_100_percent():
    """At 100% the upper Wilson bound used to come out as 0.9999999999999999 for 933 of
    n = 1..3000 (and the lower one above 0 at 0% for 213), giving matplotlib a negative error bar."""
    for n in range(1, 3001):
        for k in (0, 1, n // 2, n - 1, n):
            low, high = wilson_interval(k, n)
            assert low <= k / n <= high, (k, n)
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
    for values in ([1.0] * 7 + [0.0], [0.1, 0.2, 0.7], [1e-17, 0.0, 0.0]):
        low, high = bootstrap_ci(values, seed=0)
        assert low <= float(np.mean(values)) <= high


def test_error_bars_are_never_negative_and_plots_accept_them(tmp_path):
    import pandas as pd

    from vlminterp.plots.organism import plot_evaluation
    from vlminterp.stats import error_bars

    bars = error_bars([1.0, 0.0, 0.5], [1.0 - 1e-16, 1e-16, float("nan")], [0.9999999999999999, 0.2, 0.7])
    assert bars.shape == (2, 3) and (bars >= 0).all()
    rows = []
    for task, (k, n) in {"describe": (933, 933), "polling": (0, 213), "color": (5, 10)}.items():
        low, high = wilson_interval(k, n)
        rows.append({"task": task, "n": n, "accuracy": k / n, "strict_accuracy": k / n,
                     "ci_low": low, "ci_high": high})
    written = plot_evaluation(pd.DataFrame(rows), tmp_path / "evaluation")
    assert all(path.stat().st_size > 0 for path in written)
