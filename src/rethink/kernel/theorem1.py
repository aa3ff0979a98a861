"""Theorem 1 (Appendix C): a depth-two ReLU network with 2n + d weights fits any real labels
y on n distinct points x_1..x_n in R^d, built as the paper's proof builds it:

    c(x) = sum_j w_j max(<a, x> - b_j, 0)

- a (d weights): a random direction (N(0, I_d), seeded), so that the projections
  z_i = <a, x_i> are distinct (with probability 1 for distinct points; checked);
- b (n weights): with the points ordered by z, b_1 < z_1 < b_2 < z_2 < ... < b_n < z_n (b_j the
  midpoint of z_{j-1} and z_j; b_1 = z_1 - the smallest gap);
- w (n weights): then A_ij = max(z_i - b_j, 0) is lower triangular with a positive diagonal, so
  A w = y has exactly one solution, found by forward substitution (LAPACK's trtrs via scipy).

Everything in float64. The interleaving is checked as float64 holds it (it is what gives the
network its 2n + d weights: n hidden units, one bias each); the fit by evaluating the network
itself (not A) on the points; A's conditioning (LAPACK's trcon estimate of the 1-norm condition
number) says how much float64 rounding the construction amplifies as n grows.
"""

import dataclasses

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from rethink.errors import RethinkError


@dataclasses.dataclass
class Network:
    a: np.ndarray  # d
    b: np.ndarray  # n
    w: np.ndarray  # n

    @property
    def n_weights(self):
        return self.a.size + self.b.size + self.w.size

    def __call__(self, x):
        return np.maximum(x @ self.a[:, None] - self.b[None, :], 0.0) @ self.w


def _projections(x, generator):
    a = generator.standard_normal(x.shape[1])
    z = x @ a
    order = np.argsort(z, kind="stable")
    gaps = np.diff(z[order])
    if len(gaps) and not gaps.min() > 0:
        raise RethinkError(
            f"points {order[np.argmin(gaps)]} and {order[np.argmin(gaps) + 1]} project to the same value "
            "(identical points?): Theorem 1 needs n distinct points"
        )
    return a, z, order


def construct(x, y, seed):
    """The network for points x (n x d) and labels y (n), and its matrix A (rows in z order)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, z, order = _projections(x, np.random.default_rng(seed))
    zs = z[order]
    gaps = np.diff(zs)
    b = np.concatenate([[zs[0] - (gaps.min() if len(gaps) else 1.0)], zs[:-1] + gaps / 2])
    _check_interleaved(b, zs)
    matrix = np.maximum(zs[:, None] - b[None, :], 0.0)
    w = scipy.linalg.solve_triangular(matrix, y[order], lower=True, check_finite=False)
    return Network(a, b, w), matrix


def _check_interleaved(b, zs):
    """b_1 < z_1 < b_2 < z_2 < ... < b_n < z_n, as float64 holds them: what makes A lower
    triangular with a positive diagonal, so that n hidden units with these biases suffice. A
    midpoint of two projections closer than float64 resolves rounds onto one of them."""
    bad = np.flatnonzero(~((b < zs) & np.concatenate([[True], zs[:-1] < b[1:]])))
    if len(bad):
        j = int(bad[0])
        raise RethinkError(
            f"bias {j + 1} ({float(b[j])!r}) does not lie strictly between projections {j} and {j + 1} "
            f"({float(zs[j - 1]) if j else -np.inf!r}, {float(zs[j])!r}): they are closer than float64 "
            "resolves, so the construction needs points whose projections differ more"
        )


def condition_number(matrix):
    """LAPACK's estimate of the 1-norm condition number of a lower-triangular matrix (O(n^2))."""
    rcond, info = lapack.dtrcon(matrix, norm="1", uplo="L", diag="N")
    if info != 0:
        raise RethinkError(f"LAPACK dtrcon failed (info = {info})")
    return np.inf if rcond == 0 else 1.0 / rcond


def verify(x, y, seed):
    """Construct, evaluate and measure: one row of results/theorem1.csv."""
    network, matrix = construct(x, y, seed)
    residual = np.abs(network(np.asarray(x, dtype=np.float64)) - y)
    n, d = np.shape(x)
    return {
        "n": n,
        "d": d,
        "weights": network.n_weights,
        "max_residual": float(residual.max()),
        "relative_residual": float(residual.max() / max(np.abs(y).max(), np.finfo(float).tiny)),
        "condition_number": float(condition_number(matrix)),
        "lower_triangular": bool(np.allclose(matrix, np.tril(matrix)) and (np.diag(matrix) > 0).all()),
    }
