import warnings

import numpy as np
import pytest
import torch

from raylsl.selectors import linear_cka


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook float64 formula (feature form), written independently."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("n, dx, dy", [(200, 16, 24), (10, 64, 48), (50, 50, 50), (3, 7, 5)])
def test_matches_float64_reference(n, dx, dy):
    g = torch.Generator().manual_seed(n + dx)
    x = torch.randn(n, dx, generator=g)
    y = x[:, :1].repeat(1, dy) + torch.randn(n, dy, generator=g)  # correlated, so CKA is not ~0
    assert abs(linear_cka(x, y) - reference_cka(x.double().numpy(), y.double().numpy())) < 1e-6


def test_gram_and_feature_forms_agree():
    x, y = torch.randn(30, 40, dtype=torch.float64), torch.randn(30, 20, dtype=torch.float64)
    # 30 samples < 40 features takes the Gram form; the reference is the feature form.
    assert abs(linear_cka(x, y) - reference_cka(x.numpy(), y.numpy())) < 1e-9


def test_identity_symmetry_range():
    x, y = torch.randn(64, 12), torch.randn(64, 9)
    assert abs(linear_cka(x, x) - 1.0) < 1e-9
    assert abs(linear_cka(x, y) - linear_cka(y, x)) < 1e-12
    assert 0.0 <= linear_cka(x, y) <= 1.0


def test_invariant_to_orthogonal_transform_and_isotropic_scale():
    x, y = torch.randn(80, 16, dtype=torch.float64), torch.randn(80, 10, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    base = linear_cka(x, y)
    assert abs(linear_cka(x @ q, y) - base) < 1e-10
    assert abs(linear_cka(x * 7.5, y * 0.01) - base) < 1e-10


def test_zero_variance_gives_defined_result_with_warning():
    x = torch.ones(20, 8) * torch.randn(1, 8)  # every sample identical
    with pytest.warns(RuntimeWarning, match="zero variance"):
        value = linear_cka(x, torch.randn(20, 8))
    assert value == 0.0 and not np.isnan(value)


def test_shape_errors():
    with pytest.raises(ValueError, match="equal n"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
