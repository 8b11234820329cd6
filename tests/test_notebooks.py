"""Every tutorial in notebooks/ runs top to bottom in its smoke mode, and is committed with the outputs of a full run.

The notebooks read ``PYRO_FLOWVAE_SMOKE`` (or ``CI``) in their first code cell: tiny data, few steps. The data
come from ``PYRO_FLOWVAE_DATA`` (here ../shared/data). Each runs in a temporary working directory, so nothing it
writes lands in the repository.
"""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, shared_data_dir

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 3_000_000


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5, f"expected the five tutorials in notebooks/, found {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_first_code_cell_sets_smoke_mode(path):
    nb = nbformat.read(path, as_version=4)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "PYRO_FLOWVAE_SMOKE" in first.source and "SMOKE" in first.source, (
        f"{path.name}: the first code cell must set SMOKE from the PYRO_FLOWVAE_SMOKE / CI environment variables"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_carries_full_run_outputs(path):
    """Figures visible on the repository page: every code cell was executed in order, in full mode, with a figure."""
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size} bytes; trim outputs"
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.strip()]
    counts = [cell.execution_count for cell in code]
    assert all(c is not None for c in counts), f"{path.name}: some code cells were not executed"
    assert counts == sorted(counts), f"{path.name}: cells were executed out of order"
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"], f"{path.name} is committed with an error"
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{path.name} has no figure in its outputs"
    text = json.dumps([out.get("text", "") for out in outputs])
    assert "SMOKE MODE" not in text, f"{path.name} carries the outputs of a smoke run, not of a full run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch, tmp_path_factory):
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    monkeypatch.setenv("PYRO_FLOWVAE_SMOKE", "1")
    monkeypatch.setenv("PYRO_FLOWVAE_DATA", str(shared))
    monkeypatch.setenv("PYRO_FLOWVAE_CACHE", str(tmp_path_factory.getbasetemp() / "notebook_cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = json.dumps([out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs])
    assert "SMOKE MODE" in text, f"{path.name} did not announce smoke mode (print 'SMOKE MODE' in the first cell)"
