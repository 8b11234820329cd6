"""Sylvester flows: what the generic flow tests (log-det against autograd, gradients, save and load,
broadcasting; tests/flows/test_flows.py runs them on every registered family) do not cover."""

from __future__ import annotations

import pytest
import torch

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.flows import build_flow
from pyro_flowvae.flows.sylvester import SylvesterTransform, householder_product

DTYPE = torch.float64
SYLVESTER = ["sylvester_orthogonal", "sylvester_householder", "sylvester_triangular"]


def scrambled(name: str, latent_dim: int = 5, num_flows: int = 3, gain: float = 3.0, **options):
    torch.manual_seed(0)
    flow = build_flow(name, latent_dim, 7, num_flows, **options).to(DTYPE)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, gain)
    return flow


@pytest.mark.parametrize("name", ["sylvester_orthogonal", "sylvester_householder"])
def test_q_has_orthonormal_columns_for_any_head_output(name):
    flow = scrambled(name)
    for q in flow.orthogonal_matrices(torch.randn(4, 7, dtype=DTYPE)):
        gram = q.transpose(-1, -2) @ q
        assert torch.allclose(gram, torch.eye(q.size(-1), dtype=DTYPE).expand_as(gram), atol=1e-10)


def test_householder_product_is_the_product_of_reflections():
    v = torch.randn(3, 5, dtype=DTYPE)
    expected = torch.eye(5, dtype=DTYPE)
    for vj in v:
        expected = expected @ (torch.eye(5, dtype=DTYPE) - 2 * torch.outer(vj, vj) / vj.dot(vj))
    assert torch.allclose(householder_product(v), expected, atol=1e-12)


def test_orthogonal_flow_uses_fewer_columns_when_asked():
    flow = scrambled("sylvester_orthogonal", latent_dim=6, num_ortho_vectors=2)
    (q, *_) = flow.orthogonal_matrices(torch.randn(4, 7, dtype=DTYPE))
    assert q.shape == (4, 6, 2)
    transform = flow(torch.randn(4, 7, dtype=DTYPE))[0]
    assert transform.pre_activations(torch.randn(3, 4, 6, dtype=DTYPE)).shape == (3, 4, 2)


@pytest.mark.parametrize("name", SYLVESTER)
def test_every_layer_stays_invertible_for_extreme_parameters(name):
    """tanh diagonals keep R_mm R~_mm in (-1, 1), so every factor 1 + h' R_mm R~_mm of det J is positive."""
    flow = scrambled(name, gain=30.0)
    z = torch.randn(64, 4, 5, dtype=DTYPE)
    for transform in flow(torch.randn(4, 7, dtype=DTYPE)):
        assert (transform.diag > -1).all()
        y = transform(z)
        assert torch.isfinite(transform.log_abs_det_jacobian(z, y)).all()
        z = y


def test_layer_is_the_sylvester_formula():
    """z' = z + Q R tanh(R~ Q^T z + b), written out for one datapoint."""
    torch.manual_seed(1)
    L, M = 4, 3
    q, _ = torch.linalg.qr(torch.randn(L, M, dtype=DTYPE))
    # diagonals in (-1, 1), as the flow makes them: the layer is then invertible
    r = torch.triu(torch.randn(M, M, dtype=DTYPE), 1) + torch.diag(torch.tanh(torch.randn(M, dtype=DTYPE)))
    r_tilde = torch.triu(torch.randn(M, M, dtype=DTYPE), 1) + torch.diag(torch.tanh(torch.randn(M, dtype=DTYPE)))
    b = torch.randn(M, dtype=DTYPE)
    z = torch.randn(L, dtype=DTYPE)
    transform = SylvesterTransform((q, r, r_tilde, b))
    expected = z + q @ r @ torch.tanh(r_tilde @ q.T @ z + b)
    assert torch.allclose(transform(z), expected, atol=1e-12)
    jacobian = torch.autograd.functional.jacobian(transform, z)
    assert torch.allclose(transform.log_abs_det_jacobian(z, transform(z)), torch.linalg.slogdet(jacobian)[1])


def test_too_many_ortho_vectors_names_the_key():
    with pytest.raises(ConfigError, match="num_ortho_vectors must be at most model.latent_dim"):
        build_flow("sylvester_orthogonal", 4, 7, 2, num_ortho_vectors=5)
