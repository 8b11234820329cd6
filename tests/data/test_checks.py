"""check_data: NaN/inf, data_dim and likelihood support, each with a message that says what to do."""

from __future__ import annotations

import pytest
import torch

from pyro_flowvae.data import check_data
from pyro_flowvae.errors import DataError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def test_valid_data_pass(device):
    binary = torch.bernoulli(torch.full((30, 5), 0.4), generator=torch.Generator().manual_seed(0)).to(device)
    grey = torch.rand(30, 5).to(device)
    check_data(binary, likelihood="bernoulli", data_dim=5)
    check_data(grey, likelihood="bernoulli", binarize_dynamic=True)
    check_data(grey, likelihood="continuous_bernoulli")
    check_data(grey * 100 - 3, likelihood="gaussian", data_dim=5)
    check_data(torch.empty(0, 5, device=device), likelihood="bernoulli", data_dim=5)


def test_non_binary_under_bernoulli(device):
    x = torch.zeros(10, 4, device=device)
    x[6, 1] = 0.25
    with pytest.raises(DataError) as info:
        check_data(x, likelihood="bernoulli", split="valid")
    message = str(info.value)
    assert "the valid split has 1 value(s) outside {0, 1}" in message
    assert "0.25 at row 6, column 1" in message
    assert 'data.binarize = "dynamic" or "static"' in message
    assert 'model.likelihood = "continuous_bernoulli" or "gaussian"' in message


def test_dynamic_binarization_needs_the_unit_interval(device):
    x = torch.rand(10, 4, device=device)
    x[0, 3] = 1.5
    with pytest.raises(DataError, match=r"dynamic binarization draws Bernoulli\(x\).*1.5 at row 0, column 3"):
        check_data(x, likelihood="bernoulli", binarize_dynamic=True)
    with pytest.raises(DataError, match=r"continuous_bernoulli' needs values in \[0, 1\].*range \[.*, 1.5\]"):
        check_data(x, likelihood="continuous_bernoulli", split="test")
    check_data(x, likelihood="gaussian")


def test_nan_and_inf_counted_and_located(device):
    x = torch.zeros(10, 8, device=device)
    x[3, 5] = float("nan")
    x[7, 1] = float("-inf")
    with pytest.raises(
        DataError,
        match=r"the test split has 2 non-finite value\(s\) \(1 NaN, 1 inf\) out of 80; "
        r"the first is at row 3, column 5 \(value nan\)",
    ):
        check_data(x, likelihood="gaussian", split="test")


def test_data_dim_mismatch_names_both_numbers(device):
    with pytest.raises(
        DataError,
        match=r"the train split has 784 values per example but the model expects "
        r"data_dim = 100",
    ):
        check_data(torch.zeros(2, 784, device=device), likelihood="bernoulli", data_dim=100)


def test_shape_and_type():
    with pytest.raises(DataError, match=r"must have shape \(N, D\), got \(2, 3, 4\)"):
        check_data(torch.zeros(2, 3, 4), likelihood="bernoulli")
    with pytest.raises(DataError, match="must be a torch.Tensor"):
        check_data([[0, 1]], likelihood="bernoulli")


def test_large_finite_values_do_not_trip_the_fast_path():
    x = torch.full((4, 4), 3e38)  # the float32 sum overflows to inf, but every value is finite
    check_data(x, likelihood="gaussian")
