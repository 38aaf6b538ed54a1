"""Print the path of a working Python interpreter of one minor version (e.g. 3.12), or nothing.

Used by the Makefile to find the Python that onnx2tf needs (>= 3.12) wherever this machine keeps it.
Each candidate is run once to prove it works (a pyenv shim for a version that is not active fails),
and the interpreter's own ``sys.executable`` is printed. Looks, in order, at:

1. ``$PYTHON<MAJOR><MINOR>`` (e.g. ``PYTHON312``) when set;
2. ``python3.12`` on ``PATH``;
3. pyenv's versions (``$PYENV_ROOT``, else ``pyenv root``, else ``~/.pyenv``);
4. ``uv python find 3.12`` when uv is installed (interpreters uv already has; nothing is downloaded);
5. the usual system folders (``/usr/bin``, ``/usr/local/bin``, ``/opt/python*``).

Usage: ``python scripts/find_python.py 3.12``. Stdlib only; exits 0 with empty output when none works.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PROBE = "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"


def _run(cmd: list[str], timeout: float = 30) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _pyenv_roots() -> list[str]:
    roots = [os.environ.get("PYENV_ROOT", "")]
    if shutil.which("pyenv"):
        roots.append(_run(["pyenv", "root"]))
    roots.append(str(Path.home() / ".pyenv"))
    return [r for r in dict.fromkeys(roots) if r]


def candidates(version: str) -> Iterator[str]:
    """Interpreter paths worth probing for ``version`` ("3.12"), best first."""
    env = os.environ.get("PYTHON" + version.replace(".", ""), "")
    if env:
        yield env
    on_path = shutil.which(f"python{version}")
    if on_path:
        yield on_path
    for root in _pyenv_roots():
        yield from sorted(glob.glob(f"{root}/versions/{version}*/bin/python{version}"), reverse=True)
    if shutil.which("uv"):
        found = _run(["uv", "python", "find", "--no-python-downloads", version])
        if found:
            yield found
    for folder in ("/usr/bin", "/usr/local/bin", *sorted(glob.glob("/opt/python*/bin"))):
        yield f"{folder}/python{version}"


def find(version: str) -> str:
    """The first candidate that runs and reports ``version``; "" when none does."""
    for path in dict.fromkeys(candidates(version)):
        if not os.access(path, os.X_OK):
            continue
        out = _run([path, "-c", PROBE]).splitlines()
        if len(out) == 2 and out[1] == version:
            return out[0]
    return ""


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: find_python.py MAJOR.MINOR")
    print(find(sys.argv[1]))
