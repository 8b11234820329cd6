"""Every script in examples/ runs in its seconds-long --smoke mode (as Pyro's tests/test_examples.py does)."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from tests.conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def test_there_are_examples():
    assert EXAMPLES, "examples/*.py not found"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_in_smoke_mode(path):
    module = load(path)
    assert hasattr(module, "main") and hasattr(module, "parse_args"), f"{path.name} needs main(args) and parse_args"
    result = module.main(module.parse_args(["--smoke"]))
    if isinstance(result, dict) and "test_log_px" in result:
        assert math.isfinite(result["test_log_px"]) and result["test_log_px"] >= result["test_elbo"]
