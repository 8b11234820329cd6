"""The packaged airline series and its forecasting windows: values, standardisation, masks, errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from pyro_flowvae.data.airline import airline_windows, load_airline, to_passengers
from pyro_flowvae.data.sequences import SequenceSplits
from pyro_flowvae.errors import DataError

from .conftest import _shared_data_dir

PACKAGED = Path(__file__).resolve().parents[2] / "pyro_flowvae" / "data" / "files" / "airline-passengers.csv"


def _read_plain(path: Path) -> tuple[list[str], list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r[0] for r in rows], [float(r[1]) for r in rows]


class TestLoad:
    def test_packaged_series_matches_the_reference_figures(self):
        months, passengers = load_airline()
        assert len(months) == 144 and passengers.shape == (144,) and passengers.dtype == torch.float64
        assert (months[0], months[-1]) == ("1949-01", "1960-12")
        assert passengers[:6].tolist() == [112, 118, 132, 129, 121, 135]
        assert passengers[-2:].tolist() == [390, 432] and float(passengers.sum()) == 40363

    def test_packaged_file_is_a_copy_of_the_shared_one(self):
        shared = _shared_data_dir()
        if shared is None or not (shared / "airline" / "airline-passengers.csv").is_file():
            pytest.skip("shared airline data absent")
        assert PACKAGED.read_bytes() == (shared / "airline" / "airline-passengers.csv").read_bytes()

    def test_reads_a_user_file(self, tmp_path):
        path = tmp_path / "series.csv"
        path.write_text('"Month","Passengers"\n"2000-01",10\n"2000-02",12.5\n\n')
        months, values = load_airline(path)
        assert months == ["2000-01", "2000-02"] and values.tolist() == [10.0, 12.5]

    def test_bad_files(self, tmp_path):
        with pytest.raises(DataError, match=r"airline file .*nope.csv not found; pass path=None"):
            load_airline(tmp_path / "nope.csv")
        bad = tmp_path / "bad.csv"
        bad.write_text("Month,Passengers\n1949-01,112\n1949-02,many\n")
        with pytest.raises(DataError, match=r"bad.csv, line 3: the passenger count 'many' is not a number"):
            load_airline(bad)


@pytest.fixture(scope="module")
def splits() -> SequenceSplits:
    return airline_windows()


class TestWindows:
    def test_shapes_and_times(self, splits):
        assert isinstance(splits, SequenceSplits) and (splits.seq_len, splits.data_dim) == (36, 1)
        windows = 132 - 36 + 1
        assert len(splits.train) == 2 * windows and len(splits.valid) == len(splits.test) == 1
        # every window fully observed, then a copy with its last 12 months masked (the forecasting task)
        assert bool(splits.train.mask[:windows].all())
        assert bool(splits.train.mask[windows:, :24].all()) and not bool(splits.train.mask[windows:, 24:].any())
        torch.testing.assert_close(splits.train.truth[windows:], splits.train.truth[:windows])
        only_full = airline_windows(forecast_copies=False)
        assert len(only_full.train) == windows and only_full.train.truth is None
        # times are month index / 12, window i of train starting at month i
        torch.testing.assert_close(splits.train.times[5], torch.arange(5, 41) / 12.0)
        torch.testing.assert_close(splits.test.times[0], torch.arange(108, 144) / 12.0)
        torch.testing.assert_close(splits.valid.times[0], torch.arange(96, 132) / 12.0)

    def test_values_are_log_standardised_with_training_statistics(self, splits):
        _, raw = _read_plain(PACKAGED)
        logs = [math.log(v) for v in raw]
        mean = sum(logs[:132]) / 132
        std = math.sqrt(sum((v - mean) ** 2 for v in logs[:132]) / 132)
        assert splits.meta["mean"] == pytest.approx(mean) and splits.meta["std"] == pytest.approx(std)
        expected = torch.tensor([(v - mean) / std for v in logs])
        torch.testing.assert_close(splits.train.x[7, :, 0], expected[7:43])
        torch.testing.assert_close(splits.test.truth[0, :, 0], expected[108:144])

    def test_last_horizon_masked_in_valid_and_test(self, splits):
        for data in (splits.valid, splits.test):
            assert data.mask[0, :24, 0].tolist() == [1.0] * 24 and data.mask[0, 24:, 0].tolist() == [0.0] * 12
            assert data.x[0, 24:, 0].tolist() == [0.0] * 12
            torch.testing.assert_close(data.x[0, :24], data.truth[0, :24])

    def test_meta_and_back_transform(self, splits):
        months, raw = _read_plain(PACKAGED)
        meta = splits.meta
        assert meta["test_months"] == months[132:] == [f"1960-{m:02d}" for m in range(1, 13)]
        assert meta["test_index"] == list(range(132, 144)) and meta["series"] == raw
        assert (meta["transform"], meta["horizon"], meta["window"]) == ("log", 12, 36)
        torch.testing.assert_close(
            to_passengers(splits.test.truth[0, 24:, 0].double(), splits),
            torch.tensor(raw[132:], dtype=torch.float64),
            rtol=1e-5,
            atol=0,
        )
        assert to_passengers(torch.tensor([0.0]), meta).item() == pytest.approx(math.exp(meta["mean"]))

    def test_stride_horizon_and_plain_transform(self):
        series = torch.arange(1.0, 41.0)
        splits = airline_windows(series, window=10, horizon=5, stride=4, transform="none", forecast_copies=False)
        # training part: the first 35 values; windows of 10 start at 0, 4, ..., 24 (24 + 10 <= 35)
        assert [float(w[0]) for w in splits.train.times] == pytest.approx([s / 12 for s in range(0, 25, 4)])
        assert splits.meta["test_months"] is None
        restored = to_passengers(splits.test.truth[0, :, 0].double(), splits.meta)
        torch.testing.assert_close(restored, series[30:].double())

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (
                {"window": 12, "horizon": 12},
                r"window = 12 must be longer than horizon = 12.*raise window to at least 13",
            ),
            ({"window": 140}, r"has 144 values but window = 140 and horizon = 12 need at least .* 152.*at most 132"),
            ({"transform": "sqrt"}, r"transform must be one of log, none, got 'sqrt'"),
            ({"stride": 0}, r"stride must be a positive integer"),
        ],
    )
    def test_errors(self, kwargs, match):
        with pytest.raises(DataError, match=match):
            airline_windows(**kwargs)

    def test_non_positive_values_refused_by_log(self):
        series = torch.arange(50.0) - 3
        with pytest.raises(DataError, match=r"transform = 'log' needs positive values, but value 0 is -3"):
            airline_windows(series, window=20, horizon=5)
        assert airline_windows(series, window=20, horizon=5, transform="none").data_dim == 1


def test_end_year_cuts_the_series_for_a_rolling_origin():
    """end_year = 1957: the months up to 1957-12 only; 1957 is the test year, scaled with 1949-1956 alone, and
    nothing of 1958 or later reaches any split."""
    months, passengers = load_airline()
    data = airline_windows(end_year=1957)
    assert data.meta["test_months"] == [f"1957-{m:02d}" for m in range(1, 13)]
    assert data.meta["series"] == passengers[:108].tolist()
    assert data.meta["mean"] == pytest.approx(float(passengers[:96].log().mean()))
    assert torch.allclose(to_passengers(data.test.truth[0, -12:, 0].double(), data), passengers[96:108], rtol=1e-5)
    with pytest.raises(DataError, match=r"end_year = 1961: the series has no month 1961-12 \(it runs from 1949-01"):
        airline_windows(end_year=1961)
    with pytest.raises(DataError, match=r"end_year must be a year such as 1957"):
        airline_windows(end_year="1957")
    with pytest.raises(DataError, match=r"end_year needs the month labels"):
        airline_windows(passengers, end_year=1957)
