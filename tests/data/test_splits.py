"""DataSplits: shape checks on construction, data_dim, moving between devices."""

from __future__ import annotations

import pytest
import torch

from pyro_flowvae.data import DataSplits
from pyro_flowvae.errors import DataError


def _splits(**overrides) -> DataSplits:
    fields = dict(
        name="toy",
        train=torch.zeros(6, 12),
        valid=torch.zeros(2, 12),
        test=torch.zeros(3, 12),
        image_shape=(3, 2, 2),
        binarize="none",
    )
    return DataSplits(**{**fields, **overrides})


def test_fields_and_data_dim():
    data = _splits()
    assert data.data_dim == 12 and data.image_shape == (3, 2, 2)
    assert repr(data) == (
        "DataSplits(name='toy', train=(6, 12), valid=(2, 12), test=(3, 12), image_shape=(3, 2, 2), "
        "binarize='none', device=cpu)"
    )


def test_validation():
    with pytest.raises(DataError, match="binarize must be one of"):
        _splits(binarize="sometimes")
    with pytest.raises(DataError, match=r"the same number of columns D, got \{'train': 12, 'valid': 5"):
        _splits(valid=torch.zeros(2, 5))
    with pytest.raises(DataError, match=r"DataSplits.test must be a 2-D tensor \(N, D\), got \(3, 3, 4\)"):
        _splits(test=torch.zeros(3, 3, 4))
    with pytest.raises(DataError, match=r"image_shape \(1, 3, 3\) must be \(C, H, W\) with C\*H\*W equal"):
        _splits(image_shape=(1, 3, 3))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_to_moves_every_split(device):
    data = _splits().to(device)
    assert all(getattr(data, s).device.type == device for s in ("train", "valid", "test"))
    assert data.name == "toy" and data.binarize == "none"
