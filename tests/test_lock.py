"""requirements.lock is what `run.py` installs: it must pin, with hashes, a version of everything
pyproject.toml asks for that pyproject.toml allows (a stale lock fails here, not on a user's
machine). `python3 run.py lock` rewrites it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def pins() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) for every package the lock pins."""
    found: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            found[current] = (match.group(2), [])
        elif "--hash=sha256:" in line and current:
            found[current][1].append(line.split("--hash=sha256:", 1)[1].split()[0])
    return found


def wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in ("test", "dev"):
        names += project["optional-dependencies"][extra]
    return [Requirement(n) for n in names]


def test_every_requirement_is_pinned_within_its_range_with_hashes() -> None:
    locked = pins()
    assert locked, "requirements.lock pins nothing"
    for requirement in wanted():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is missing from requirements.lock: run.py lock"
        version, hashes = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {requirement}: run.py lock"
        )
    for name, (version, hashes) in locked.items():
        assert hashes and all(len(h) == 64 for h in hashes), f"{name}=={version} has no hash"


def test_run_py_installs_from_the_lock_and_documents_how_to_update_it() -> None:
    run = (ROOT / "run.py").read_text()
    assert '"--require-hashes"' in run and "requirements.lock" in run
    readme = (ROOT / "README.md").read_text()
    assert "python3 run.py lock" in readme
