"""Theorem 1's construction checks what gives its network 2n + d weights: biases that interleave
the sorted projections, as float64 holds them (a check that fails where the proof's assumption does)."""

import numpy as np
import pytest

from rethink.errors import RethinkError
from rethink.kernel import theorem1


def test_interleaved_biases_give_n_hidden_units_and_an_exact_fit():
    x = np.random.default_rng(0).standard_normal((300, 5))
    y = np.random.default_rng(1).standard_normal(300)
    network, matrix = theorem1.construct(x, y, seed=0)
    zs = np.sort(x @ network.a)
    assert (network.b < zs).all() and (zs[:-1] < network.b[1:]).all()
    assert network.b.size == network.w.size == 300 and network.n_weights == 2 * 300 + 5
    assert np.abs(network(x) - y).max() < 1e-6


def test_projections_closer_than_float64_resolves_are_refused_naming_the_bias():
    """Two points one ulp apart: their projections' midpoint rounds onto one of them, so no bias
    lies strictly between them and A would have a zero on its diagonal."""
    x = np.array([[1.0], [np.nextafter(1.0, 2.0)], [2.0]])
    with pytest.raises(RethinkError, match=r"bias 2 .* does not lie strictly between projections 1 and 2"):
        theorem1.verify(x, np.array([0.0, 1.0, 2.0]), seed=0)
