"""ARCHITECTURE.md checked like code: the modules it says import Ray are exactly those that do,
and every file it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "ARCHITECTURE.md").read_text()


def imports_ray(path: Path) -> bool:
    """Whether a module imports Ray anywhere (at the top or inside a function)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray"
                                                for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").split(".")[0] == "ray":
            return True
    return False


def section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end > 0 else None]


def test_the_modules_that_import_ray_are_those_the_architecture_names():
    named = set(re.findall(r"`(regene_ray/[\w/]+\.py)`", section("Where Ray enters")))
    actual = {p.relative_to(REPO).as_posix() for p in sorted((REPO / "regene_ray").rglob("*.py"))
              if imports_ray(p)}
    assert named, "ARCHITECTURE.md's 'Where Ray enters' names no module"
    assert actual == named, (f"import Ray but are not named: {sorted(actual - named)}; named "
                             f"but do not import Ray: {sorted(named - actual)}")


def test_every_file_the_architecture_names_exists():
    full = re.findall(r"`((?:regene_ray|jobs|benchmarks|tests|cluster|configs|search_spaces)"
                      r"/[\w./-]+\.(?:py|yaml|sh|md))`", DOC)
    short = re.findall(r"`((?:search|mass|evaluation)/\w+\.py)`", DOC)  # inside regene_ray/
    paths = [REPO / p for p in full] + [REPO / "regene_ray" / p for p in short]
    assert len(paths) > 20  # the tables are there
    missing = sorted(str(p.relative_to(REPO)) for p in paths if not p.is_file())
    assert not missing, f"ARCHITECTURE.md names files that do not exist: {missing}"
