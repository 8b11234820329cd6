"""iterate_minibatches: one pass per epoch, batch sizes, reproducibility, dynamic binarization, devices."""

from __future__ import annotations

import pytest
import torch

from pyro_flowvae.data import DataSplits, iterate_minibatches, num_minibatches
from pyro_flowvae.errors import DataError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def _ids(n: int, device: str) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1).repeat(1, 3)


def test_every_example_exactly_once(device):
    x = _ids(103, device)
    batches = list(iterate_minibatches(x, 10, generator=torch.Generator(device=device).manual_seed(0)))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    seen = torch.cat(batches)[:, 0]
    assert seen.device == x.device
    assert torch.equal(seen.sort().values, x[:, 0])
    assert not torch.equal(seen, x[:, 0])  # shuffled
    assert len(batches) == num_minibatches(103, 10)


def test_drop_last(device):
    batches = list(iterate_minibatches(_ids(103, device), 10, drop_last=True))
    assert [len(b) for b in batches] == [10] * 10 == [10] * num_minibatches(103, 10, drop_last=True)
    assert len(torch.cat(batches)[:, 0].unique()) == 100


def test_no_shuffle_gives_views_in_order():
    x = _ids(25, "cpu")
    batches = list(iterate_minibatches(x, 10, shuffle=False))
    assert torch.equal(torch.cat(batches), x)
    assert batches[1].data_ptr() == x[10].data_ptr()  # a view, no copy


def test_reproducible_with_a_seeded_generator(device):
    x = torch.rand(64, 5, device=device)

    def epoch(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator(device=device).manual_seed(seed)
        return list(iterate_minibatches(x, 16, generator=gen, dynamic_binarize=True))

    a, b, c = epoch(7), epoch(7), epoch(8)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_dynamic_binarization_is_a_bernoulli_draw(device):
    grey = torch.rand(2000, 50, generator=torch.Generator().manual_seed(0)).to(device) * 0.6
    gen = torch.Generator(device=device).manual_seed(0)
    batches = list(iterate_minibatches(grey, 500, generator=gen, dynamic_binarize=True))
    drawn = torch.cat(batches)
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert abs(float(drawn.mean()) - float(grey.mean())) < 5e-3
    # a second epoch draws again
    again = torch.cat(list(iterate_minibatches(grey, 500, shuffle=False, generator=gen, dynamic_binarize=True)))
    assert abs(float(again.mean()) - float(grey.mean())) < 5e-3


def test_dynamic_binarization_of_mnist(mnist_dynamic: DataSplits):
    grey = mnist_dynamic.train[:5000]
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat(list(iterate_minibatches(grey, 1000, shuffle=False, generator=gen, dynamic_binarize=True)))
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert abs(float(drawn.mean()) - float(grey.mean())) < 2e-3
    assert not (drawn[grey == 0] == 1).any() and not (drawn[grey == 1] == 0).any()


def test_bad_arguments():
    with pytest.raises(DataError, match="batch_size must be a positive integer, got 0"):
        list(iterate_minibatches(torch.zeros(4, 2), 0))
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        num_minibatches(10, -1)
    assert list(iterate_minibatches(torch.zeros(0, 2), 8)) == []
    assert num_minibatches(0, 8) == 0 and num_minibatches(17, 8) == 3 and num_minibatches(17, 8, True) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_need_no_host_sync():
    x = torch.rand(1000, 20, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    with pytest.raises(DataError, match="the generator is on cpu but the data are on cuda"):
        next(iterate_minibatches(x, 100, generator=torch.Generator()))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = list(iterate_minibatches(x, 100, generator=gen, dynamic_binarize=True))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(b.device.type == "cuda" and b.shape == (100, 20) for b in batches)
