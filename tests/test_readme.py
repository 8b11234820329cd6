"""The README stays true: generated blocks match their sources, and CI runs the README's commands."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_generated_readme_blocks_are_up_to_date():
    result = subprocess.run([sys.executable, "benchmarks/render_readme.py", "--check"], cwd=REPO,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Set up and test\s+```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    install, test = block
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[test]"' in ci and 'pip install -e ".[test]"' in install
    assert test in ci, (test, ci)


def test_readme_mentions_every_cli_command():
    readme = (REPO / "README.md").read_text()
    for command in ("train", "evaluate", "sample", "compare", "config"):
        assert f"pyro-flowvae {command}" in readme


def test_readme_links_every_tutorial_with_a_figure():
    readme = (REPO / "README.md").read_text()
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        row = next((line for line in readme.splitlines() if f"(notebooks/{notebook.name})" in line), None)
        assert row is not None, f"README.md does not link notebooks/{notebook.name}"
        figure = re.search(r'src="([^"]+)"', row)
        assert figure and (REPO / figure.group(1)).is_file(), f"the README row of {notebook.name} needs a figure"


def test_readme_names_every_example():
    readme = (REPO / "README.md").read_text()
    for example in sorted((REPO / "examples").glob("*.py")):
        assert f"examples/{example.name}" in readme, f"README.md does not mention examples/{example.name}"
