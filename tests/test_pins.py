"""constraints.txt pins every dependency pyproject.toml names: CI never floats to a new release."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)")


def _pins() -> dict[str, Version]:
    """constraints.txt as {canonical name: version}; every line must be NAME==VERSION."""
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.fullmatch(line.strip())
        assert match, f"constraints.txt line {number} is not NAME==VERSION: {line!r}"
        name = canonicalize_name(match["name"])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(match["version"])
    return pins


def _declared() -> list[Requirement]:
    """Every requirement pyproject.toml declares: build, runtime and optional (kiln-ml's own
    extras, e.g. kiln-ml[compiler], left out)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    specs = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    for extra in project["project"]["optional-dependencies"].values():
        specs += extra
    own = canonicalize_name(project["project"]["name"])
    return [r for r in map(Requirement, specs) if canonicalize_name(r.name) != own]


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = _pins()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} ({req}) is in pyproject.toml but not pinned with == " \
                             "in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's '{req}'"


def test_ci_installs_with_the_pins():
    assert 'PIP_CONSTRAINT="$PWD/constraints.txt"' in (ROOT / ".ci" / "run").read_text()
    assert "-c constraints.txt" in (ROOT / "README.md").read_text()
