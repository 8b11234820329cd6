"""The airline-passengers series (Box & Jenkins, Series G) and its forecasting windows."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_flowvae.data.sequences import SequenceData, SequenceSplits
from pyro_flowvae.errors import DataError

__all__ = ["AIRLINE_TRANSFORMS", "airline_windows", "load_airline", "to_passengers"]

#: how values are transformed before standardisation
AIRLINE_TRANSFORMS = ("log", "none")
_PACKAGED = "airline-passengers.csv"
_PACKAGED_ROWS, _PACKAGED_SUM = 144, 40363


def _read_rows(text: str, source: str) -> tuple[list[str], list[float]]:
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{source} is empty; expected a header and rows 'month,passengers'")
    months, values = [], []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) < 2:
            raise DataError(f"{source}, line {i}: expected two columns 'month,passengers', got {row!r}")
        try:
            value = float(row[1])
        except ValueError:
            raise DataError(f"{source}, line {i}: the passenger count {row[1]!r} is not a number") from None
        months.append(row[0].strip())
        values.append(value)
    return months, values


def load_airline(path: str | os.PathLike[str] | None = None) -> tuple[list[str], Tensor]:
    """Months ('1949-01' ... '1960-12') and monthly passengers (thousands), a float64 tensor (144,).

    Reads the CSV shipped in the package (``pyro_flowvae/data/files/airline-passengers.csv``, header
    ``"Month","Passengers"``) unless ``path`` names another file with the same two columns. The packaged file
    is checked: 144 rows summing to 40363.

    [1] George E. P. Box, Gwilym M. Jenkins. Time Series Analysis: Forecasting and Control. 1976. Series G.
    """
    if path is None:
        source = f"the packaged {_PACKAGED}"
        text = resources.files("pyro_flowvae.data").joinpath("files", _PACKAGED).read_text(encoding="utf-8")
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"airline file {file} not found; pass path=None to read the packaged copy")
        try:
            source, text = str(file), file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{file} is not UTF-8 text (byte {error.start}: {error.reason}); save the CSV as UTF-8"
            ) from None
        except OSError as error:
            raise DataError(f"cannot read airline file {file}: {error.strerror or error}") from None
    months, values = _read_rows(text, source)
    series = torch.tensor(values, dtype=torch.float64)
    if path is None and (len(values) != _PACKAGED_ROWS or float(series.sum()) != _PACKAGED_SUM):
        raise DataError(
            f"{source} is damaged: expected {_PACKAGED_ROWS} rows summing to {_PACKAGED_SUM}, got {len(values)} "
            f"rows summing to {float(series.sum()):g}; reinstall pyro-flowvae"
        )
    return months, series


def _forward(values: Tensor, transform: str) -> Tensor:
    return values.log() if transform == "log" else values


def to_passengers(values: Tensor, meta: dict[str, Any] | SequenceSplits) -> Tensor:
    r"""Undo :func:`airline_windows`' scaling: :math:`y = \exp(\mu + \sigma v)` (or :math:`\mu + \sigma v`
    when ``transform = "none"``), with :math:`\mu, \sigma` from ``meta`` (or the splits' ``meta``)."""
    meta = meta.meta if isinstance(meta, SequenceSplits) else meta
    scaled = values * meta["std"] + meta["mean"]
    return scaled.exp() if meta["transform"] == "log" else scaled


def _window(
    values: Tensor, start: int, window: int, masked: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x, mask, times, truth of one window (1, window, 1) starting at ``start``, its last ``masked`` hidden."""
    truth = values[start : start + window].to(dtype).reshape(1, window, 1)
    mask = torch.ones_like(truth)
    if masked:
        mask[:, -masked:] = 0
    times = (torch.arange(start, start + window, dtype=torch.float64) / 12).to(dtype).reshape(1, window)
    return truth * mask, mask, times, truth


def _until(months: Sequence[str] | None, series: Tensor, end_year: Any) -> tuple[list[str], Tensor]:
    """The months and values up to December of ``end_year``."""
    if isinstance(end_year, bool) or not isinstance(end_year, int):
        raise DataError(f"end_year must be a year such as 1957, got {end_year!r}")
    if months is None or len(months) != series.shape[0]:
        raise DataError("end_year needs the month labels of the series ('1949-01', ...): pass months")
    last = f"{end_year}-12"
    if last not in months:
        raise DataError(
            f"end_year = {end_year}: the series has no month {last} (it runs from {months[0]} to {months[-1]}); "
            "choose a year it covers to its December"
        )
    n = list(months).index(last) + 1
    return list(months[:n]), series[:n]


def airline_windows(
    series: Tensor | Sequence[float] | None = None,
    *,
    months: Sequence[str] | None = None,
    window: int = 36,
    horizon: int = 12,
    stride: int = 1,
    transform: str = "log",
    forecast_copies: bool = True,
    end_year: int | None = None,
) -> SequenceSplits:
    r"""Windows of a monthly series for forecasting the last ``horizon`` values (D = 1, times in years).

    With n values, the first n - ``horizon`` form the training part and the last ``horizon`` are the test
    period (for the airline data: the 12 months of 1960). Values are transformed (``"log"`` or ``"none"``)
    and standardised, :math:`v = (\log y - \mu) / \sigma`, with the mean and (population) standard deviation of
    the training part only. Then

    - train: every full window of ``window`` months inside the training part, starting every ``stride``
      months, all observed; with ``forecast_copies`` also a copy of each with its last ``horizon`` months
      masked, so the encoder learns the forecasting task the test poses (masked months add no likelihood
      term, and every month stays observed in some window);
    - valid: the window ending at the end of the training part with its last ``horizon`` months masked
      (``truth`` keeps them): a back-test;
    - test: the window ending at the end of the series with its last ``horizon`` months masked (``truth``
      keeps the values to forecast).

    With ``end_year`` (e.g. 1957) only the months up to December of that year are kept (``months`` must name
    them, as the packaged series does), so its last ``horizon`` months are forecast from the years before: the
    origins of a rolling-origin backtest. Scaling, windows and baselines then see nothing later.

    Times are month index / 12 (years since the first month). ``series=None`` uses :func:`load_airline`'s
    packaged series and months. ``meta`` holds ``mean``, ``std``, ``transform``, ``horizon``, ``window``,
    ``stride``, ``test_index`` (positions of the forecast months in the series), ``test_months`` (their
    labels, when ``months`` are known), ``months`` and the raw ``series`` (list of floats);
    :func:`to_passengers` maps model outputs back to the original scale.
    """
    if series is None:
        months, series_t = load_airline()
    else:
        series_t = torch.as_tensor(series, dtype=torch.float64).reshape(-1)
    if end_year is not None:
        months, series_t = _until(months, series_t, end_year)
    n = series_t.shape[0]
    if transform not in AIRLINE_TRANSFORMS:
        raise DataError(f"transform must be one of {', '.join(AIRLINE_TRANSFORMS)}, got {transform!r}")
    for name, value in (("window", window), ("horizon", horizon), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be a positive integer, got {value!r}")
    if window <= horizon:
        raise DataError(
            f"window = {window} must be longer than horizon = {horizon}, so that a window shows some observed "
            f"months before the ones to forecast; raise window to at least {horizon + 1} or lower horizon"
        )
    if n < window + horizon:
        raise DataError(
            f"the series has {n} values but window = {window} and horizon = {horizon} need at least "
            f"window + horizon = {window + horizon} (one full training window before the {horizon} test "
            f"months); lower window (at most {n - horizon}) or horizon, or use a longer series"
        )
    if months is not None and len(months) != n:
        raise DataError(f"months has {len(months)} labels but the series has {n} values; give one label per value")
    if not bool(torch.isfinite(series_t).all()):
        raise DataError("the series has NaN or infinite values; fill or drop them before making windows")
    if transform == "log" and not bool((series_t > 0).all()):
        first = int(torch.nonzero(series_t <= 0)[0, 0])
        raise DataError(
            f"transform = 'log' needs positive values, but value {first} is {float(series_t[first]):g}; use "
            "transform = 'none' or shift the series"
        )
    n_train = n - horizon
    transformed = _forward(series_t, transform)
    mean = float(transformed[:n_train].mean())
    std = float(transformed[:n_train].std(correction=0))
    if not std > 0:
        raise DataError("the training part of the series is constant: it cannot be standardised")
    values = (transformed - mean) / std
    dtype = torch.get_default_dtype()

    def stack(parts: list[tuple[Tensor, Tensor, Tensor, Tensor]], masked: bool) -> SequenceData:
        x, mask, times, truth = (torch.cat(items) for items in zip(*parts))
        return SequenceData(x=x, mask=mask, times=times, truth=truth if masked else None)

    starts = range(0, n_train - window + 1, stride)
    parts = [_window(values, s, window, 0, dtype) for s in starts]
    if forecast_copies:
        parts += [_window(values, s, window, horizon, dtype) for s in starts]
    train = stack(parts, masked=forecast_copies)
    valid = stack([_window(values, n_train - window, window, horizon, dtype)], masked=True)
    test = stack([_window(values, n - window, window, horizon, dtype)], masked=True)
    test_index = list(range(n_train, n))
    meta = {
        "mean": mean,
        "std": std,
        "transform": transform,
        "horizon": horizon,
        "window": window,
        "stride": stride,
        "forecast_copies": forecast_copies,
        "test_index": test_index,
        "test_months": [months[i] for i in test_index] if months is not None else None,
        "months": list(months) if months is not None else None,
        "series": series_t.tolist(),
    }
    return SequenceSplits(name="airline", train=train, valid=valid, test=test, frame_shape=None, meta=meta)
