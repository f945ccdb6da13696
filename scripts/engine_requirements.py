"""Print the requirements of one engine family's environment, one per line: the project's
core dependencies, the family's extra and `engine-tests`, from pyproject.toml (self
references such as ``opendub[cpu-synthesize]`` expanded). scripts/engine-env installs them
and hashes them: an environment is rebuilt only when they change.

    python3 scripts/engine_requirements.py gpu-speech
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_SELF = re.compile(r"^opendub\[(?P<extras>[^\]]+)\]$")


def requirements(family: str) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    if family not in extras:
        raise SystemExit(f"pyproject.toml has no extra {family!r}")
    out: list[str] = []

    def add(items: list[str]) -> None:
        for item in items:
            own = _SELF.match(item.replace(" ", ""))
            if own:
                for extra in own["extras"].split(","):
                    add(extras[extra])
            elif item not in out:
                out.append(item)

    add(project["dependencies"])
    add(extras[family])
    add(extras["engine-tests"])
    return out


if __name__ == "__main__":
    sys.stdout.write("\n".join(requirements(sys.argv[1])) + "\n")
