"""SequenceData and SequenceSplits: checks with messages, NaN -> mask, tensor-like slicing for minibatches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_flowvae.data import iterate_minibatches
from pyro_flowvae.data.sequences import SequenceData, SequenceSplits
from pyro_flowvae.errors import DataError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _data(n: int = 7, t: int = 5, d: int = 3, seed: int = 0, labels: bool = True) -> SequenceData:
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn(n, t, d, generator=gen)
    mask = (torch.rand(n, t, d, generator=gen) > 0.4).float()
    times = torch.rand(n, t, generator=gen).add(0.1).cumsum(1)
    return SequenceData(
        x=truth * mask,
        mask=mask,
        times=times,
        truth=truth,
        labels=torch.arange(n) % 3 if labels else None,
    )


class TestConstruction:
    def test_fields_and_properties(self):
        data = _data()
        assert data.shape == (7, 5, 3) == data.x.shape and len(data) == 7
        assert (data.seq_len, data.data_dim, data.device, data.dtype) == (5, 3, torch.device("cpu"), torch.float32)
        assert torch.equal(data.missing, 1 - data.mask)
        x, mask, times = data.args()
        assert x is data.x and mask is data.mask and times is data.times
        assert data.labels.dtype == torch.long
        assert repr(data).startswith("SequenceData(N=7, T=5, D=3, observed=")

    def test_missing_values_are_zeroed_and_bool_mask_converted(self):
        x = torch.full((2, 3, 1), 5.0)
        x[0, 1, 0] = float("nan")  # NaN is allowed where missing
        mask = torch.ones(2, 3, 1, dtype=torch.bool)
        mask[0, 1, 0] = mask[1, 2, 0] = False
        data = SequenceData(x=x, mask=mask, times=torch.arange(3.0).expand(2, 3))
        assert data.mask.dtype == torch.float32
        assert data.x[:, :, 0].tolist() == [[5.0, 0.0, 5.0], [5.0, 5.0, 0.0]]
        assert bool(torch.isfinite(data.x).all())

    def test_integer_times_become_float(self):
        data = SequenceData(x=torch.zeros(1, 3, 2), mask=torch.ones(1, 3, 2), times=torch.tensor([[0, 2, 7]]))
        assert data.times.dtype == torch.float32 and data.times.tolist() == [[0.0, 2.0, 7.0]]

    @pytest.mark.parametrize(
        "override, match",
        [
            (
                {"x": torch.zeros(4, 5)},
                r"SequenceData.x must be a floating-point tensor of shape \(N, T, D\), got \(4, 5\)",
            ),
            ({"x": torch.zeros(2, 4, 3, dtype=torch.long)}, r"got \(2, 4, 3\) torch.int64.*\.float\(\)"),
            ({"mask": torch.ones(2, 4, 2)}, r"SequenceData.mask must have the shape of x \(2, 4, 3\), got \(2, 4, 2\)"),
            ({"mask": torch.full((2, 4, 3), 0.5)}, r"only 0 \(missing\) and 1 \(observed\).*at \(0, 0, 0\)"),
            ({"times": torch.arange(4.0)}, r"SequenceData.times must have shape \(N, T\) = \(2, 4\), got \(4,\)"),
            ({"times": torch.tensor([[0.0, 1, 2, 3], [0, 1, 1, 2]])}, r"strictly increasing.*\(i, j\) = \(1, 1\)"),
            ({"times": torch.tensor([[0.0, 1, 2, 3], [0, 1, float("nan"), 2]])}, r"times .* non-finite.*\(1, 2\)"),
            ({"truth": torch.zeros(2, 4)}, r"SequenceData.truth must be None or a float tensor of the shape of x"),
            ({"truth": torch.full((2, 4, 3), float("inf"))}, r"SequenceData.truth \(2, 4, 3\) has non-finite"),
            ({"labels": torch.zeros(3)}, r"SequenceData.labels must be None or a tensor of shape \(N,\) = \(2,\)"),
            ({"labels": torch.tensor([0.5, 1.0])}, r"labels must be integer class indices"),
        ],
    )
    def test_checks_name_the_field_and_fix(self, override, match):
        fields = {"x": torch.zeros(2, 4, 3), "mask": torch.ones(2, 4, 3), "times": torch.arange(4.0).expand(2, 4)}
        with pytest.raises(DataError, match=match):
            SequenceData(**{**fields, **override})

    def test_observed_nan_is_refused(self):
        x = torch.zeros(1, 2, 2)
        x[0, 1, 1] = float("nan")
        with pytest.raises(DataError, match=r"1 non-finite observed value\(s\), the first at \(0, 1, 1\).*from_arrays"):
            SequenceData(x=x, mask=torch.ones(1, 2, 2), times=torch.tensor([[0.0, 1.0]]))


class TestFromArrays:
    def test_nan_marks_missing(self):
        values = np.array([[[1.0, np.nan], [np.nan, 4.0]], [[5.0, 6.0], [7.0, np.nan]]])
        data = SequenceData.from_arrays(values)
        expected_mask = (~np.isnan(values)).astype(np.float32)
        assert np.array_equal(data.mask.numpy(), expected_mask)
        assert np.array_equal(data.x.numpy(), np.nan_to_num(values, nan=0.0).astype(np.float32))
        assert data.times.tolist() == [[0.0, 1.0], [0.0, 1.0]]
        assert data.x.dtype == torch.float32  # arrays get the default dtype
        assert SequenceData.from_arrays(torch.tensor(values)).x.dtype == torch.float64  # tensors keep theirs
        assert data.truth is None and data.labels is None

    def test_two_dim_values_and_shared_times(self):
        values = torch.tensor([[1.0, float("nan"), 3.0]])
        data = SequenceData.from_arrays(values, times=torch.tensor([0.5, 1.5, 4.0]), labels=[2])
        assert data.shape == (1, 3, 1)
        assert data.times.tolist() == [[0.5, 1.5, 4.0]] and data.labels.tolist() == [2]
        assert data.mask[0, :, 0].tolist() == [1.0, 0.0, 1.0]

    def test_bad_shape(self):
        with pytest.raises(DataError, match=r"from_arrays needs values of shape \(N, T, D\) or \(N, T\), got \(4,\)"):
            SequenceData.from_arrays(torch.zeros(4))


class TestTensorLike:
    def test_slicing_and_index_select_agree_with_the_tensors(self):
        data = _data()
        idx = torch.tensor([5, 0, 3])
        for part in (data[idx], data.index_select(0, idx), data[[5, 0, 3]]):
            assert isinstance(part, SequenceData) and len(part) == 3
            for name in ("x", "mask", "times", "truth", "labels"):
                assert torch.equal(getattr(part, name), getattr(data, name)[idx])
        part = data[2:4]
        assert torch.equal(part.x, data.x[2:4]) and torch.equal(part.times, data.times[2:4])
        assert torch.equal(data[-1].x, data.x[-1:]) and len(data[0]) == 1
        mask = torch.zeros(7, dtype=torch.bool)
        mask[[1, 4]] = True
        assert torch.equal(data[mask].labels, data.labels[[1, 4]])
        with pytest.raises(IndexError, match="out of range"):
            data[7]
        with pytest.raises(DataError, match="dim must be 0"):
            data.index_select(1, idx)

    def test_optional_fields_stay_none(self):
        part = _data(labels=False)[torch.tensor([1])]
        assert part.labels is None and part.truth is not None

    @pytest.mark.parametrize("device", DEVICES)
    def test_iterate_minibatches_covers_every_sequence_once(self, device):
        data = _data(n=23).to(device)
        batches = list(iterate_minibatches(data, 5, generator=torch.Generator(device=device).manual_seed(0)))
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        assert all(isinstance(b, SequenceData) and b.device == data.device for b in batches)
        seen = torch.cat([b.times[:, 0] for b in batches])
        assert torch.equal(seen.sort().values, data.times[:, 0].sort().values)
        # rows stay aligned across fields: each batch row matches the original row with the same first time
        for b in batches:
            rows = torch.stack([torch.nonzero(data.times[:, 0] == t0)[0, 0] for t0 in b.times[:, 0]])
            assert torch.equal(b.x, data.x[rows]) and torch.equal(b.labels, data.labels[rows])
        in_order = list(iterate_minibatches(data, 10, shuffle=False))
        assert torch.equal(torch.cat([b.x for b in in_order]), data.x)

    @pytest.mark.parametrize("device", DEVICES)
    def test_to_moves_every_field(self, device):
        moved = _data().to(device)
        assert all(getattr(moved, k).device.type == device for k in ("x", "mask", "times", "truth", "labels"))


class TestSplits:
    def test_fields_and_repr(self):
        splits = SequenceSplits(
            "toy", _data(n=7, d=4), _data(n=2, d=4), _data(n=3, d=4), frame_shape=(1, 2, 2), meta={"a": 1}
        )
        assert (splits.data_dim, splits.seq_len, splits.binarize, splits.image_shape) == (4, 5, "none", (1, 2, 2))
        assert repr(splits) == (
            "SequenceSplits(name='toy', train=7, valid=2, test=3, T=5, D=4, frame_shape=(1, 2, 2), device=cpu)"
        )
        moved = splits.to("cpu")
        assert moved.meta == {"a": 1} and isinstance(moved.train, SequenceData)

    def test_checks(self):
        with pytest.raises(DataError, match="SequenceSplits.valid must be a SequenceData, got Tensor"):
            SequenceSplits("toy", _data(), torch.zeros(2, 5, 3), _data())
        with pytest.raises(DataError, match=r"the same \(T, D\), got .*'test': \(5, 2\)"):
            SequenceSplits("toy", _data(), _data(), _data(d=2))
        with pytest.raises(DataError, match=r"frame_shape \(1, 2, 2\) holds 4 values but a frame has D = 3"):
            SequenceSplits("toy", _data(), _data(), _data(), frame_shape=(1, 2, 2))
        assert math.prod(SequenceSplits("toy", _data(), _data(), _data(), frame_shape=(3,)).frame_shape) == 3


def test_regular_times_are_stored_once_and_stay_shared_through_slices_batches_and_copies():
    x = torch.rand(6, 4, 2)
    regular = SequenceData(x=x, mask=torch.ones_like(x), times=torch.arange(4.0).expand(6, 4).clone())
    assert regular.regular_times and regular.times.stride(0) == 0
    base = regular.times.untyped_storage().data_ptr()
    for part in (regular[1:4], regular.index_select(0, torch.tensor([5, 0, 2])), regular[[1, 3]], regular[2]):
        assert part.times.untyped_storage().data_ptr() == base and part.times.shape == (len(part), 4)
        assert torch.equal(part.times, torch.arange(4.0).expand(len(part), 4))
    moved = regular.to("cpu")
    assert moved.regular_times and torch.equal(moved.times, regular.times)
    irregular = SequenceData(x=x, mask=torch.ones_like(x), times=torch.arange(24.0).reshape(6, 4))
    assert not irregular.regular_times and irregular.index_select(0, torch.tensor([1])).times.tolist() == [[4, 5, 6, 7]]
