"""Print the requirements of pyproject.toml's base dependencies plus the given extras.

Images install these in their own layer before copying any source, so a source edit does not
reinstall TensorFlow. Self-references (``modelport[a,b]``) are expanded. Stdlib only (runs in
the bare build stage):  ``python deploy/pyproject_requirements.py inference > requirements.txt``
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Base dependencies plus those of ``extras`` (expanded recursively), in order, deduplicated."""
    project = tomllib.loads(pyproject.read_text())["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    seen: set[str] = set()

    def add(reqs: list[str]) -> None:
        for req in reqs:
            m = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.strip())
            if m:
                for extra in m.group(1).split(","):
                    add_extra(extra.strip())
            elif req not in out:
                out.append(req)

    def add_extra(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml defines: {', '.join(sorted(optional))}")
        seen.add(extra)
        add(optional[extra])

    add(project.get("dependencies", []))
    for extra in extras:
        add_extra(extra)
    return out


def main(argv: list[str]) -> int:
    """Print one requirement per line for the extras named in ``argv``."""
    root = Path(__file__).resolve().parent.parent
    extras = [e for arg in argv for e in arg.split(",") if e]
    print("\n".join(requirements(root / "pyproject.toml", extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
