"""Tests of the flow families: log-dets, inverses, gradients, saving, broadcasting, devices and errors."""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian
from torch.distributions import Transform

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.flows import FLOWS, ConditionalFlow, build_flow, flow_names, flow_options, register_flow
from pyro_flowvae.flows.base import MeanField
from pyro_flowvae.flows.planar import PlanarFlow
from pyro_flowvae.flows.radial import RadialFlow

DTYPE = torch.float64
H = 6  # context (encoder hidden state) size used throughout

# Every registered family with its defaults, plus the non-default variants worth checking as carefully.
CASES = [(name, {}) for name in flow_names()] + [
    ("iaf", {"stable": True}),
    ("iaf", {"hidden_dims": [8]}),
    ("sylvester_orthogonal", {"num_ortho_vectors": 1}),
    ("sylvester_householder", {"num_householder": 1}),
    ("spline", {"order": "quadratic"}),
    ("spline", {"count_bins": 3, "bound": 2.0}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in options.items()) for name, options in CASES]
cases = pytest.mark.parametrize("name, options", CASES, ids=IDS)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These tensors are tiny; on a busy machine each OpenMP region (softmax, log_sigmoid) costs ~10 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- helpers --------------------------------------------------------------------------------------------
@torch.no_grad()
def scramble(flow: nn.Module, gain: float = 1.0) -> None:
    """Overwrite every parameter with larger random values so that the flow is far from the identity."""
    for p in flow.parameters():
        if p.dim() > 1:
            p.normal_(0.0, gain / math.sqrt(p.size(-1)))
        else:
            p.normal_(0.0, 0.5)


def make(name: str, options: dict, latent_dim: int = 3, num_flows: int = 2, seed: int = 0) -> ConditionalFlow:
    torch.manual_seed(seed)
    flow = build_flow(name, latent_dim, H, num_flows, **options).to(DTYPE)
    scramble(flow)
    return flow


def push(transforms: list[Transform], z: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the transforms in order; return z_K and the summed log|det J| (shape z.shape[:-1])."""
    log_det = z.new_zeros(z.shape[:-1])
    for t in transforms:
        y = t(z)
        log_det = log_det + t.log_abs_det_jacobian(z, y)
        z = y
    return z, log_det


def pull(transforms: list[Transform], y: Tensor) -> Tensor:
    """Invert the transforms, from a clone of y so that no transform's cache can answer."""
    x = y.clone()
    for t in reversed(transforms):
        x = t.inv(x)
    return x


def randn(*shape: int, device: str | torch.device = "cpu") -> Tensor:
    return torch.randn(*shape, dtype=DTYPE, device=device)


def tensors_in(obj: object, depth: int = 0) -> Iterator[Tensor]:
    """Every tensor a transform holds: attributes, parameter tuples, conditioned networks (partials)."""
    if depth > 4:
        return
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
        if isinstance(obj, Transform):
            yield from tensors_in(vars(obj), depth + 1)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from tensors_in(item, depth + 1)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            if key not in ("_inv",):  # a weak reference back to the transform
                yield from tensors_in(item, depth + 1)
    elif isinstance(obj, functools.partial):
        yield from tensors_in(obj.func, depth + 1)
        yield from tensors_in(list(obj.args) + list(obj.keywords.values()), depth + 1)
    elif isinstance(obj, Transform):
        yield from tensors_in(vars(obj), depth + 1)


# -- 1. exact log-determinants --------------------------------------------------------------------------
@cases
@pytest.mark.parametrize("latent_dim, num_flows, seed", [(3, 2, 0), (4, 3, 1), (5, 2, 2), (1, 1, 3)])
def test_log_det_matches_autograd_jacobian(name, options, latent_dim, num_flows, seed):
    flow = make(name, options, latent_dim, num_flows, seed)
    B = 3
    h, z0 = randn(B, H), randn(B, latent_dim)
    transforms = flow(h)
    y, log_det = push(transforms, z0)
    J = jacobian(lambda z: push(transforms, z)[0], z0)  # (B, L, B, L)
    blocks = torch.stack([J[b, :, b, :] for b in range(B)])
    assert torch.allclose(log_det, torch.linalg.slogdet(blocks).logabsdet, atol=1e-8, rtol=0)
    for b in range(B):  # datapoints do not mix
        J[b, :, b, :] = 0.0
    assert J.abs().max() == 0.0
    if flow.num_flows > 0:  # the test means something only if the flow is far from the identity
        assert (y - z0).abs().max() > 0.1


@pytest.mark.parametrize("w_norm", [1.0, 3.0])
def test_planar_stays_invertible_for_adversarial_u(w_norm):
    """Raw u = -10 w, so w^T u = -10 |w|^2 << -1; u_hat must restore w^T u_hat > -1 and det J > 0.

    w^T u_hat = softplus(w^T u) - 1, which rounds to exactly -1 once w^T u < -37 in float64 (-17 in
    float32); det J = 1 + (1 - tanh^2) w^T u_hat = tanh^2(w^T z + b) is then still > 0 but can be tiny.
    """
    L = 4
    torch.manual_seed(0)
    flow = PlanarFlow(L, H, 3).to(DTYPE)
    with torch.no_grad():
        flow.head.weight.normal_(0.0, 0.01)
        b, u, w = flow.head.bias.view(3, 2 * L + 1).split([1, L, L], dim=-1)
        w.normal_()
        w.mul_(w_norm / w.norm(dim=-1, keepdim=True))
        u.copy_(-10.0 * w)
        b.normal_()
    h, z0 = randn(5, H), randn(5, L)
    transforms = flow(h)
    for t in transforms:
        _, u_raw, w_raw = t._params
        assert ((u_raw * w_raw).sum(-1) < -9 * w_norm**2).all()
        w_u_hat = (t.u_hat(u_raw, w_raw) * w_raw).sum(-1)
        # saturated: -1 up to rounding (~|w^T u| eps), so det J = tanh^2(...) - O(eps) > 0 but fragile
        assert (w_u_hat > -1).all() if w_norm == 1.0 else (w_u_hat > -1 - 1e-12).all()
    _, log_det = push(transforms, z0)
    assert log_det.isfinite().all()
    for i in range(5):
        sign, logabsdet = torch.linalg.slogdet(jacobian(lambda z, i=i: push(flow(h[i]), z)[0], z0[i]))
        assert sign == 1.0
        assert torch.allclose(log_det[i], logabsdet, atol=1e-8)


def test_radial_stays_invertible_for_adversarial_beta():
    L = 3
    torch.manual_seed(0)
    flow = RadialFlow(L, H, 2).to(DTYPE)
    with torch.no_grad():
        flow.head.weight.normal_(0.0, 0.01)
        x0, alpha, beta = flow.head.bias.view(2, L + 2).split([L, 1, 1], dim=-1)
        x0.zero_()
        alpha.fill_(-3.0)
        beta.fill_(-30.0)  # beta -> -alpha: the contraction towards x0 is as strong as allowed
    h, z0 = randn(4, H), randn(4, L)
    _, log_det = push(flow(h), z0)
    for i in range(4):
        sign, logabsdet = torch.linalg.slogdet(jacobian(lambda z, i=i: push(flow(h[i]), z)[0], z0[i]))
        assert sign == 1.0
        assert torch.allclose(log_det[i], logabsdet, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radial_scale_is_exact_and_finite_at_extreme_head_outputs(dtype):
    """softplus(y) = c * softplus(x) across the range of x, and y and its gradient stay finite where softplus(x)
    underflows (x of -200 in float32)."""
    from pyro_flowvae.flows.radial import _scaled_softplus_argument

    x = torch.tensor([-200.0, -50.0, -5.0, 0.0, 5.0, 50.0], dtype=dtype, requires_grad=True)
    y = _scaled_softplus_argument(x, 6.0)
    ratio = torch.nn.functional.softplus(y[1:]) / torch.nn.functional.softplus(x[1:])
    assert torch.allclose(ratio, torch.full_like(ratio, 6.0), rtol=1e-5)
    y.sum().backward()
    assert y.isfinite().all() and x.grad.isfinite().all()


# -- 2. inverses ---------------------------------------------------------------------------------------
def test_has_inverse_of_builtin_families():
    expected = {"mean_field": True, "planar": False, "radial": False, "householder": True, "iaf": True}
    expected["spline"] = True
    expected.update(sylvester_orthogonal=False, sylvester_householder=False, sylvester_triangular=False)
    assert {name: FLOWS[name].has_inverse for name in expected} == expected


@cases
def test_inverse_round_trip(name, options):
    flow = make(name, options, latent_dim=4, num_flows=3)
    h, z0 = randn(5, H), randn(5, 4)
    transforms = flow(h)
    y, _ = push(transforms, z0)
    if not flow.has_inverse:
        with pytest.raises(KeyError, match="expected to find key in intermediates cache"):
            pull(transforms, y)
        return
    assert torch.allclose(pull(transforms, y), z0, atol=1e-6, rtol=0)
    y_any = randn(5, 4)  # a y the flow never produced
    assert torch.allclose(push(transforms, pull(transforms, y_any))[0], y_any, atol=1e-6, rtol=0)


@cases
def test_transformed_distribution_scores_its_own_samples(name, options):
    """How the guide uses a flow: log q(z_K) = log q0(z0) - sum log|det J|, also without an inverse."""
    flow = make(name, options, latent_dim=3, num_flows=2)
    S, B = 4, 5
    h = randn(B, H)
    base = dist.Normal(randn(B, 3), torch.rand(B, 3, dtype=DTYPE) + 0.5).to_event(1)
    transforms = flow(h)
    q = dist.TransformedDistribution(base, transforms) if transforms else base
    with pyro.validation_enabled(True):
        z = q.rsample(torch.Size([S]))
        assert z.shape == (S, B, 3) and q.event_shape == (3,) and q.batch_shape == (B,)
        assert q.log_prob(z).shape == (S, B)
        z0 = randn(S, B, 3)
        zk, log_det = push(transforms, z0)
        assert torch.allclose(q.log_prob(zk), base.log_prob(z0) - log_det, atol=1e-10)


# -- 3. gradients --------------------------------------------------------------------------------------
@cases
def test_every_parameter_and_the_context_get_gradients(name, options):
    flow = make(name, options, latent_dim=4, num_flows=3)
    h = randn(5, H).requires_grad_()
    z0 = randn(2, 5, 4).requires_grad_()
    y, log_det = push(flow(h), z0)
    (y.sum() + log_det.sum()).backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} gets no gradient"
    if flow.num_flows > 0:
        assert h.grad is not None and h.grad.abs().sum() > 0


# -- 4. save / load ------------------------------------------------------------------------------------
@cases
def test_state_dict_round_trip(name, options):
    saved, fresh = make(name, options, seed=0), make(name, options, seed=1)
    h, z0 = randn(4, H), randn(2, 4, 3)
    y_saved, ld_saved = push(saved(h), z0)
    if any(True for _ in saved.parameters()):
        assert not torch.allclose(push(fresh(h), z0)[0], y_saved)
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    y_fresh, ld_fresh = push(fresh(h), z0)
    assert torch.equal(y_fresh, y_saved) and torch.equal(ld_fresh, ld_saved)


# -- 5. broadcasting over sample and batch dims ---------------------------------------------------------
@cases
def test_sample_dims_broadcast_over_the_context_batch(name, options):
    flow = make(name, options, latent_dim=3, num_flows=3)
    S, B = 3, 4
    h, z0 = randn(B, H), randn(S, B, 3)
    transforms = flow(h)
    y, log_det = push(transforms, z0)
    assert y.shape == (S, B, 3) and log_det.shape == (S, B)
    for s in range(S):
        y_s, ld_s = push(transforms, z0[s])
        assert torch.allclose(y[s], y_s, atol=1e-12) and torch.allclose(log_det[s], ld_s, atol=1e-12)
    for b in range(B):  # an unbatched context, shape (H,)
        y_b, ld_b = push(flow(h[b]), z0[:, b])
        assert torch.allclose(y[:, b], y_b, atol=1e-12) and torch.allclose(log_det[:, b], ld_b, atol=1e-12)
    h2, z2 = randn(2, B, H), randn(S, 2, B, 3)  # two batch dims
    y2, ld2 = push(flow(h2), z2)
    assert y2.shape == (S, 2, B, 3) and ld2.shape == (S, 2, B)
    assert torch.allclose(y2[:, 1], push(flow(h2[1]), z2[:, 1])[0], atol=1e-12)


# -- initialisation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", flow_names())
@pytest.mark.parametrize("num_flows", [2, 3])
def test_fresh_flow_starts_near_identity(name, num_flows):
    """Every family starts near the identity map; Householder pairs its reflections (H H = I), so for odd K its
    last reflection has no partner and it starts one reflection away."""
    if name == "householder" and num_flows % 2:
        pytest.skip("an odd number of reflections cannot be the identity")
    torch.manual_seed(0)
    flow = build_flow(name, 4, 16, num_flows)
    z0 = torch.randn(32, 4)
    y, log_det = push(flow(torch.randn(32, 16)), z0)
    assert (y - z0).abs().max() < 0.05 and log_det.abs().max() < 0.05


@pytest.mark.parametrize("name", [n for n in flow_names() if n != "mean_field"])
def test_fresh_flow_leaves_standard_noise_within_005_nats_at_full_size(name):
    """The guide's flows act on eps ~ N(0, I); at the likelihood benchmark's sizes (L = 40, h of 300, K = 16 planar
    or 4 of the others) a fresh flow moves that distribution by less than 0.05 nats: KL(f(eps) || N(0, I)) is
    estimated as E[log N(eps) - log|det J| - log N(f(eps))]. (A Householder flow acts on z0, not on eps, in the
    guide; here it is checked like the others.)"""
    torch.manual_seed(0)
    flow = build_flow(name, 40, 300, 16 if name in ("planar", "radial") else 4)
    eps = torch.randn(256, 40)
    with torch.no_grad():
        y, log_det = push(flow(torch.relu(torch.randn(256, 300))), eps)
    normal = torch.distributions.Normal(0.0, 1.0)
    kl = (normal.log_prob(eps).sum(-1) - log_det - normal.log_prob(y).sum(-1)).mean()
    assert abs(float(kl)) < 0.05


def test_fresh_stable_iaf_starts_near_forget_gate_contraction():
    torch.manual_seed(0)
    flow = build_flow("iaf", 4, 16, 3, stable=True)
    z0 = torch.randn(32, 4)
    y, log_det = push(flow(torch.randn(32, 16)), z0)
    gate = torch.sigmoid(torch.tensor(2.0))
    assert torch.allclose(y, gate**3 * z0, atol=0.05)
    assert torch.allclose(log_det, 3 * 4 * gate.log().expand(32), atol=0.05)


# -- 6. errors -----------------------------------------------------------------------------------------
def test_unknown_name_lists_the_known_ones():
    known = ", ".join(sorted(FLOWS))
    with pytest.raises(ConfigError, match=re.escape(f"unknown flow 'foo'; choose guide.flow from: {known}")):
        build_flow("foo", 2, 4, 1)
    assert known.startswith("householder, iaf, mean_field, planar, radial, spline")


@pytest.mark.parametrize("name", flow_names())
@pytest.mark.parametrize(
    "sizes, match",
    [
        ((0, 4, 1), r"model\.latent_dim must be an integer >= 1 \(got 0\)"),
        ((2.0, 4, 1), r"model\.latent_dim must be an integer >= 1 \(got 2\.0\)"),
        ((2, 0, 1), r"context_dim .* must be an integer >= 1 \(got 0\)"),
        ((2, 4, -1), r"guide\.num_flows must be an integer >= [01] \(got -1\)"),
        ((2, 4, True), r"guide\.num_flows must be an integer >= [01] \(got True\)"),
    ],
)
def test_bad_sizes_name_the_key(name, sizes, match):
    with pytest.raises(ConfigError, match=match):
        build_flow(name, *sizes)


@pytest.mark.parametrize("name", [n for n in flow_names() if FLOWS[n].min_flows > 0])
def test_zero_flows_points_to_mean_field(name):
    with pytest.raises(ConfigError, match=r"guide\.num_flows must be an integer >= 1 \(got 0\).*'mean_field'"):
        build_flow(name, 2, 4, 0)


def test_mean_field_ignores_num_flows():
    flow = build_flow("mean_field", 2, 4, 5)
    assert isinstance(flow, MeanField) and flow.num_flows == 0 and flow(torch.randn(3, 4)) == []


@pytest.mark.parametrize(
    "name, match",
    [
        ("radial", r"unknown key\(s\) guide\.options\.radial\.foo for flow 'radial'; radial takes no options"),
        (
            "iaf",
            r"unknown key\(s\) guide\.options\.iaf\.foo for flow 'iaf'; iaf accepts: guide\.options\.iaf\.hidden_dims, "
            r"guide\.options\.iaf\.stable",
        ),
        ("spline", r"spline\.foo for flow 'spline'; spline accepts: guide\.options\.spline\.bound, .*\.order$"),
    ],
)
def test_unknown_option_lists_the_family_options(name, match):
    with pytest.raises(ConfigError, match=match):
        build_flow(name, 2, 4, 1, foo=1)


def test_flow_options_report_defaults():
    assert flow_options("iaf") == {"hidden_dims": None, "stable": False}
    assert flow_options("spline") == {"count_bins": 8, "bound": 5.0, "order": "linear", "hidden_dims": None}
    assert flow_options("planar") == {"centered": True}


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("iaf", {"hidden_dims": [2]}, r"guide\.options\.iaf\.hidden_dims must be an integer >= 3 \(got 2\).*MADE"),
        ("iaf", {"hidden_dims": 64}, r"guide\.options\.iaf\.hidden_dims must be a non-empty list"),
        ("iaf", {"hidden_dims": []}, r"guide\.options\.iaf\.hidden_dims must be a non-empty list"),
        ("iaf", {"stable": "yes"}, r"guide\.options\.iaf\.stable must be true or false"),
        ("spline", {"count_bins": 1}, r"guide\.options\.spline\.count_bins must be an integer >= 2"),
        ("spline", {"bound": 0.0}, r"guide\.options\.spline\.bound must be a number > 0"),
        ("spline", {"order": "cubic"}, r"guide\.options\.spline\.order must be one of linear, quadratic"),
    ],
)
def test_bad_option_values(name, options, match):
    with pytest.raises(ConfigError, match=match):
        build_flow(name, 3, 4, 1, **options)


def test_wrong_context_size_is_reported():
    flow = build_flow("planar", 2, 4, 1)
    with pytest.raises(ValueError, match=r"expects a context of shape \(\*batch, 4\), got \(3, 5\)"):
        flow(torch.randn(3, 5))


def test_register_flow_adds_a_family_to_build_flow():
    @register_flow("test_double_planar")
    def double_planar(latent_dim: int, context_dim: int, num_flows: int, *, scale: int = 2) -> ConditionalFlow:
        return PlanarFlow(latent_dim, context_dim, scale * num_flows)

    try:
        assert "test_double_planar" in flow_names() and flow_names() == sorted(flow_names())
        assert build_flow("test_double_planar", 2, 4, 1, scale=3).num_flows == 3
        with pytest.raises(ConfigError, match="test_double_planar accepts: guide.options.test_double_planar.scale"):
            build_flow("test_double_planar", 2, 4, 1, bins=3)
        with pytest.raises(ValueError, match="already registered"):
            register_flow("test_double_planar")(double_planar)
    finally:
        del FLOWS["test_double_planar"]


# -- 7. dtype and device -------------------------------------------------------------------------------
@cases
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_to_moves_every_transform(name, options, device):
    torch.manual_seed(0)
    flow = build_flow(name, 3, H, 2, **options).to(device=device, dtype=DTYPE)
    h, z0 = randn(4, H, device=device), randn(2, 4, 3, device=device)
    transforms = flow(h)
    held = [t for transform in transforms for t in tensors_in(transform)]
    assert len(held) > 0 or not transforms
    for t in held:
        assert t.device.type == device
        assert not t.is_floating_point() or t.dtype == DTYPE
    y, log_det = push(transforms, z0)
    assert y.dtype == log_det.dtype == DTYPE and y.device.type == log_det.device.type == device
    if flow.has_inverse:
        x = pull(transforms, y)
        assert x.dtype == DTYPE and x.device.type == device
        assert torch.allclose(x, z0, atol=1e-6)
