"""The lock that `make setup` installs: it satisfies pyproject.toml, checks every file by hash, and is what
this environment holds, so a green suite here is a green suite on any machine set up from the same commit."""
from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKED_EXTRAS = ("tf", "ui", "dev")  # as `make lock` resolves them


def locked() -> dict[str, str]:
    """name -> pinned version of every entry whose marker holds here (the lock is universal)."""
    pins = {}
    for entry in re.split(r"\n(?=\S)", (ROOT / "requirements.lock").read_text()):
        if entry.startswith("#") or not entry.strip():
            continue
        head = entry.split(" \\")[0]
        requirement, _, marker = head.partition(" ; ")
        name, pinned = requirement.split("==")
        if not marker or Marker(marker).evaluate():
            pins[canonicalize_name(name)] = pinned
        assert "--hash=sha256:" in entry, f"{name} has no hash in requirements.lock"
    return pins


def test_the_lock_satisfies_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for extra in LOCKED_EXTRAS for r in project["optional-dependencies"][extra]]
    pins = locked()
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {req.name}=={pins[name]}, outside {req.specifier}: run make lock"


def test_this_environment_holds_the_locked_versions():
    pins = locked()
    wrong = {}
    for name, pinned in pins.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            found = None
        if found != pinned:
            wrong[name] = (pinned, found)
    assert not wrong, f"installed versions differ from requirements.lock (locked, found): {wrong}; run make setup"
