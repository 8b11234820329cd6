"""The fused planar transform against K of Pyro's ConditionedPlanar in a row, and against autograd Jacobians."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms.planar import ConditionedPlanar
from torch.autograd.functional import jacobian

from pyro_flowvae.flows import build_flow
from pyro_flowvae.flows.planar import FusedPlanar, PlanarFlow, planar_layers

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_params(batch: tuple[int, ...], K: int, L: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(b, u, w) far from the identity, with some w^T u < -1 so that u_hat has work to do."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(*batch, K, 1, generator=gen, dtype=DTYPE)
    u = 1.5 * torch.randn(*batch, K, L, generator=gen, dtype=DTYPE)
    w = torch.randn(*batch, K, L, generator=gen, dtype=DTYPE)
    u[..., ::2, :] = -2.0 * w[..., ::2, :]  # w^T u = -2 |w|^2 < -1 on every other layer
    return b, u, w


def pyro_chain(params: tuple[torch.Tensor, ...]) -> list[ConditionedPlanar]:
    """The same K layers as K separate Pyro transforms (what PlanarFlow returned before fusing)."""
    b, u, w = params
    return [ConditionedPlanar((b[..., k, :], u[..., k, :], w[..., k, :])) for k in range(u.size(-2))]


def push(transforms, z):
    log_det = z.new_zeros(z.shape[:-1])
    for t in transforms:
        y = t(z)
        log_det = log_det + t.log_abs_det_jacobian(z, y)
        z = y
    return z, log_det


@pytest.mark.parametrize("batch, sample, K, L", [((4,), (), 16, 5), ((3,), (2,), 7, 3), ((2, 3), (2,), 4, 1)])
def test_fused_equals_the_chain_of_pyro_planar_transforms(batch, sample, K, L):
    params = random_params(batch, K, L)
    z0 = torch.randn(*sample, *batch, L, dtype=DTYPE)
    fused = FusedPlanar(params)
    y, log_det = push([fused], z0)
    y_ref, log_det_ref = push(pyro_chain(params), z0)
    assert fused.num_layers == K and y.shape == z0.shape and log_det.shape == z0.shape[:-1]
    assert (y - z0).abs().max() > 0.5  # far from the identity
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=0)
    assert torch.allclose(log_det, log_det_ref, atol=1e-12, rtol=0)


def test_gradients_equal_those_of_the_pyro_chain():
    b, u, w = (p.requires_grad_() for p in random_params((5,), 8, 4, seed=1))
    z0 = torch.randn(2, 5, 4, dtype=DTYPE, requires_grad=True)
    grads = []
    for transforms in ([FusedPlanar((b, u, w))], pyro_chain((b, u, w))):
        y, log_det = push(transforms, z0)
        grads.append(torch.autograd.grad((y.sin().sum() + log_det.sum()), (b, u, w, z0)))
    for fused, chain in zip(*grads):
        assert torch.allclose(fused, chain, atol=1e-11, rtol=0)


@pytest.mark.parametrize("sample", [(), (2,)])
def test_hand_written_backward_passes_gradcheck(sample):
    """Finite differences for every input of the fused layers, sample dims broadcast over the parameters."""
    b, u, w = random_params((3,), 4, 3, seed=5)
    u_hat = FusedPlanar.u_hat(u, w)
    inputs = (
        torch.randn(*sample, 3, 3, dtype=DTYPE),
        b.squeeze(-1),
        u_hat,
        w,
        (w * u_hat).sum(-1) + 0.1,  # any value: gradcheck treats it as a free input
    )
    assert torch.autograd.gradcheck(planar_layers, tuple(t.requires_grad_() for t in inputs))


def test_second_derivatives_are_refused_not_wrong():
    b, u, w = random_params((2,), 3, 3)
    fused = FusedPlanar((b, u, w.requires_grad_()))
    with pytest.raises(RuntimeError, match=r"first-order backward pass only.*create_graph=True"):
        torch.autograd.grad(fused(torch.randn(2, 3, dtype=DTYPE)).sum(), w, create_graph=True)


@pytest.mark.parametrize("K, L", [(16, 4), (5, 6)])
def test_log_det_of_many_layers_matches_autograd_jacobian(K, L):
    params = random_params((3,), K, L, seed=2)
    fused = FusedPlanar(params)
    z0 = torch.randn(3, L, dtype=DTYPE)
    _, log_det = push([fused], z0)
    for i in range(3):
        one = FusedPlanar(tuple(p[i] for p in params))  # unbatched parameters, z of shape (L,)
        sign, logabsdet = torch.linalg.slogdet(jacobian(one, z0[i]))
        assert sign == 1.0
        assert torch.allclose(log_det[i], logabsdet, atol=1e-10, rtol=0)


def test_transformed_distribution_scores_its_own_samples_like_the_chain():
    params = random_params((6,), 16, 3, seed=3)
    base = dist.Normal(torch.zeros(6, 3, dtype=DTYPE), torch.ones(6, 3, dtype=DTYPE)).to_event(1)
    q = dist.TransformedDistribution(base, [FusedPlanar(params)])
    z = q.rsample(torch.Size([4]))
    z0 = q.transforms[0].inv(z)  # from the cache
    _, log_det = push(pyro_chain(params), z0)
    assert torch.allclose(q.log_prob(z), base.log_prob(z0) - log_det, atol=1e-12)


def test_log_det_of_another_input_is_recomputed_not_read_from_the_cache():
    params = random_params((2,), 3, 3, seed=4)
    fused = FusedPlanar(params)
    x1, x2 = torch.randn(2, 3, dtype=DTYPE), torch.randn(2, 3, dtype=DTYPE)
    y1 = fused(x1)
    fused(x2)  # the cache now holds x2
    _, expected = push(pyro_chain(params), x1)
    assert torch.allclose(fused.log_abs_det_jacobian(x1, y1), expected, atol=1e-12)


def test_no_inverse_and_the_error_names_the_fix():
    fused = FusedPlanar(random_params((2,), 3, 3))
    y = fused(torch.randn(2, 3, dtype=DTYPE))
    assert fused.inv(y) is not None  # its own sample: from the cache
    with pytest.raises(KeyError, match="expected to find key in intermediates cache.*guide.flow = 'iaf'"):
        fused.inv(y.clone())


def test_bad_parameter_shapes_are_reported():
    b, u, w = random_params((2,), 3, 4)
    with pytest.raises(AssertionError, match=r"\(\*batch, K, 1\), \(\*batch, K, L\), \(\*batch, K, L\)"):
        FusedPlanar((b, u, w[..., :3]))


def test_planar_flow_returns_one_fused_transform_with_the_head_layout():
    torch.manual_seed(0)
    flow = build_flow("planar", 4, 6, 16, centered=False)
    assert isinstance(flow, PlanarFlow)
    h = torch.randn(5, 6)
    (transform,) = flow(h)
    assert isinstance(transform, FusedPlanar) and transform.num_layers == 16
    b, u, w = flow.head(h).unflatten(-1, (16, 9)).split([1, 4, 4], dim=-1)
    z0 = torch.randn(5, 4)
    y, log_det = push([transform], z0)
    y_ref, log_det_ref = push(pyro_chain((b, u, w)), z0)
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(log_det, log_det_ref, atol=1e-6)


def test_a_centered_planar_flow_reads_each_bias_at_the_image_of_zero():
    """centered: layer k's pre-activation at f_{k-1} o ... o f_1(0) is b_k itself, and the flow equals the plain one
    with the biases of layer_bias (the same family, reparametrised)."""
    torch.manual_seed(0)
    K, L = 4, 3
    b, u, w = torch.randn(2, K, 1) * 2, torch.randn(2, K, L), torch.randn(2, K, L)
    centered = FusedPlanar((b, u, w), centered=True)
    u_hat = FusedPlanar.u_hat(u, w)
    plain = FusedPlanar((centered.layer_bias(u_hat).unsqueeze(-1), u, w))
    z = torch.randn(5, 2, L)
    assert torch.allclose(centered(z), plain(z), atol=1e-5)
    point = torch.zeros(2, L)
    for k in range(K):
        a = (point * w[:, k]).sum(-1) + centered.layer_bias(u_hat)[:, k]
        assert torch.allclose(a, b[:, k, 0], atol=1e-6)
        point = point + u_hat[:, k] * torch.tanh(a).unsqueeze(-1)
