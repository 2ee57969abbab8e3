"""The conda environment and the pip project must ask for the same packages."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# conda and PyPI spell a few packages differently
CONDA_TO_PIP = {"pytorch": "torch"}


def _name_and_spec(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.extend(extra)
    return dict(_name_and_spec(r) for r in reqs)


def _conda_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        if not isinstance(dep, str):
            continue  # the nested pip: section installs the project itself
        name, spec = _name_and_spec(dep)
        if name in ("python", "pip"):
            continue
        out[CONDA_TO_PIP.get(name, name)] = spec
    return out


def test_environment_yml_matches_pyproject():
    pip_reqs = _pyproject_requirements()
    conda_reqs = _conda_requirements()
    assert set(conda_reqs) == set(pip_reqs), (
        f"only in environment.yml: {sorted(set(conda_reqs) - set(pip_reqs))}; "
        f"only in pyproject.toml: {sorted(set(pip_reqs) - set(conda_reqs))}"
    )
    for name, spec in pip_reqs.items():
        assert conda_reqs[name] == spec, f"{name}: pyproject asks {spec!r}, environment.yml asks {conda_reqs[name]!r}"


def test_core_dependencies_exclude_notebook_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name_and_spec(r)[0] for r in project["dependencies"]}
    for notebook_only in ("matplotlib", "captum", "ipywidgets", "papermill", "jupytext", "seaborn"):
        assert notebook_only not in core


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
