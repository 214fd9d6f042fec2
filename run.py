#!/usr/bin/env python3
"""Bootstrap: make `.venv`, install vidmesh into it when its dependencies changed, run a command.

    python3 run.py up      # start the whole system (nats-server, services, gateway)
    python3 run.py test    # lint, type-check and run the test suite
    python3 run.py lock    # rewrite requirements.lock after a change in pyproject.toml

Anything after the first word is passed on (`python3 run.py up --port 8080`,
`python3 run.py test -k download`). Only the standard library is used here, so this works on a
machine that has nothing but Python 3.11+ and pip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("VIDMESH_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".vidmesh-installed"
LOCK = ROOT / "requirements.lock"
# Every package of the project, its tests and its build, pinned with hashes, for any platform.
LOCK_COMMAND = (
    "pip", "compile", "pyproject.toml", "--extra", "test", "--extra", "dev",
    "--generate-hashes", "--universal", "--python-version", "3.11",
    "--output-file", "requirements.lock",
)  # fmt: skip
NPM_STAMP = ROOT / "node_modules" / ".vidmesh-installed"


def _wanted_stamp() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(LOCK.read_bytes() if LOCK.exists() else b"")
    digest.update(sys.version.encode())
    return digest.hexdigest()


def _make_venv() -> None:
    print(f"run.py: creating {VENV}", flush=True)
    try:
        venv.EnvBuilder(with_pip=True).create(VENV)
    except (subprocess.CalledProcessError, OSError):
        # Some distributions ship Python without ensurepip: use the interpreter's own pip.
        venv.EnvBuilder(with_pip=False, clear=True).create(VENV)


def _pip(*args: str) -> None:
    if (BIN / "pip").exists():
        cmd = [str(PYTHON), "-m", "pip", *args]
    else:
        cmd = [sys.executable, "-m", "pip", "--python", str(PYTHON), *args]
    subprocess.run(cmd, check=True)


def ensure_installed() -> None:
    if not PYTHON.exists():
        _make_venv()
    wanted = _wanted_stamp()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    quiet = ("--quiet", "--disable-pip-version-check")
    if LOCK.exists():
        # Exactly what CI tested: every package pinned and checked against its hash, then vidmesh
        # itself built with the pinned setuptools (no build environment fetched unpinned).
        print(f"run.py: installing {LOCK.name} and vidmesh into {VENV}", flush=True)
        _pip("install", *quiet, "--require-hashes", "--no-deps", "-r", str(LOCK))
        _pip("install", *quiet, "--no-deps", "--no-build-isolation", "--editable", str(ROOT))
    else:
        print(f"run.py: no {LOCK.name}: installing the newest allowed versions", flush=True)
        _pip("install", *quiet, "--editable", f"{ROOT}[test,dev]")
    STAMP.write_text(wanted)


def write_lock(extra: list[str]) -> int:
    """Resolve pyproject.toml's dependencies again into requirements.lock (`--upgrade` moves every
    pin to the newest allowed release; without it, pins that still fit are kept)."""
    done = subprocess.run([str(BIN / "uv"), *LOCK_COMMAND, *extra], cwd=ROOT)
    if done.returncode == 0:
        ensure_installed()
    return done.returncode


def _npm_wanted_stamp() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = ROOT / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_node_packages() -> None:
    """Install the npm test servers (Azurite) when package.json or its lock file changed.

    Without npm, or when npm fails, warn and go on: the tests that need them are skipped.
    """
    if not (ROOT / "package.json").exists():
        return
    wanted = _npm_wanted_stamp()
    if NPM_STAMP.exists() and NPM_STAMP.read_text() == wanted:
        return
    npm = shutil.which("npm")
    if npm is None:
        print(
            "run.py: warning: npm not found; the Azure Blob (Azurite) tests will be skipped",
            file=sys.stderr,
            flush=True,
        )
        return
    print("run.py: installing the npm test servers (Azurite) into node_modules", flush=True)
    command = "ci" if (ROOT / "package-lock.json").exists() else "install"
    done = subprocess.run([npm, command, "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT)
    if done.returncode != 0:
        print(
            f"run.py: warning: `npm {command}` failed; the Azurite tests will be skipped",
            file=sys.stderr,
            flush=True,
        )
        return
    NPM_STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    ensure_installed()
    command, rest = argv[0], argv[1:]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if command == "lock":
        return write_lock(rest)
    if command == "test":
        ensure_node_packages()
        cmd = [str(BIN / "just"), "--justfile", str(ROOT / "justfile"), "test", *rest]
    else:
        cmd = [str(BIN / "vidmesh"), command, *rest]
    os.chdir(ROOT if command == "test" else os.getcwd())
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
