"""Every script in examples/ runs in its seconds-long --smoke mode (as Pyro's tests/test_examples.py does), and no
script in examples/ escapes that test."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

#: the one list of scripts the smoke test runs (test_every_example_is_covered_by_the_smoke_test checks it against git)
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def example_files_known_to_git() -> set[str] | None:
    """Python files under examples/ that git tracks or would track (untracked and not ignored), as paths relative
    to the repository; None outside a git checkout."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "examples"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {line for line in listing.splitlines() if line.endswith(".py") and (REPO / line).is_file()}


def test_there_are_examples():
    assert EXAMPLES, "examples/*.py not found"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_in_smoke_mode(path):
    module = load(path)
    assert hasattr(module, "main") and hasattr(module, "parse_args"), f"{path.name} needs main(args) and parse_args"
    result = module.main(module.parse_args(["--smoke"]))
    if isinstance(result, dict) and "test_log_px" in result:
        assert math.isfinite(result["test_log_px"]) and result["test_log_px"] >= result["test_elbo"]


def test_every_example_is_covered_by_the_smoke_test():
    """Each Python file in examples/ (tracked, or new and not ignored) is among the parameters of the smoke test
    above, exposes main and parse_args, and its parser accepts --smoke."""
    known = example_files_known_to_git()
    if known is None:
        pytest.skip("not a git checkout: cannot list the example scripts independently of the test's own list")
    marks = [m for m in test_example_runs_in_smoke_mode.pytestmark if m.name == "parametrize"]
    assert len(marks) == 1, "test_example_runs_in_smoke_mode should be parametrized once, over the example scripts"
    smoke_tested = {path.relative_to(REPO).as_posix() for path in marks[0].args[1]}
    assert known, "git lists no Python file under examples/"
    uncovered = sorted(known - smoke_tested)
    assert not uncovered, (
        f"{uncovered} not run by test_example_runs_in_smoke_mode; put every example script directly in examples/ "
        "(examples/*.py), with main(args), parse_args(argv) and a --smoke flag"
    )
    for path in EXAMPLES:
        module = load(path)
        name = path.relative_to(REPO).as_posix()
        assert callable(getattr(module, "main", None)), f"{name} needs a function main(args)"
        assert callable(getattr(module, "parse_args", None)), f"{name} needs a function parse_args(argv=None)"
        try:
            args = module.parse_args(["--smoke"])
        except SystemExit as exc:
            pytest.fail(f"{name}: parse_args(['--smoke']) exited ({exc.code}); add a --smoke flag to its parser")
        assert getattr(args, "smoke", None) is True, f"{name}: parse_args(['--smoke']) must set args.smoke = True"
