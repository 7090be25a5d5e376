"""MLlib's raw-feature coefficients rewritten for slaflow's standardising model."""

from __future__ import annotations

import numpy as np
import pytest

from spark_jobs.train_mllib import standardised_weights

pytestmark = pytest.mark.unit


def test_logits_are_unchanged_by_the_rewrite() -> None:
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    mean, std = rng.normal(size=6), np.abs(rng.normal(size=6)) + 0.1
    std[2] = 0.0  # a constant feature: the model divides by 1 there
    x = rng.normal(size=(5, 6))
    kernel, bias = standardised_weights(w, b, mean, std)
    assert kernel.shape == (6, 4) and bias.shape == (4,)
    z = (x - mean) / np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(z @ kernel + bias, x @ w.T + b, rtol=1e-4, atol=1e-4)
