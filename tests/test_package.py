"""The package as a user installs it: a wheel whose only top-level name is `pgrag`.

The repository keeps `workers/`, `api/` and `migrations/` at its top level; the wheel holds
them as `pgrag/workers`, `pgrag/api` and `pgrag/migrations` (pyproject.toml), so every place
that names them must use those names.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Repository folder -> its place in the installed package.
MAPPED = {
    "pgrag": "pgrag",
    "workers": "pgrag/workers",
    "api": "pgrag/api",
    "migrations": "pgrag/migrations",
}


def source_files() -> list[str]:
    """The repository's files as a fresh clone has them (tracked, or new and not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def pip(command: str, *args: str) -> None:
    """pip offline, on this package alone."""
    argv = [sys.executable, "-m", "pip", command, "-q", "--no-deps", "--no-index", *args]
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (so the build leaves nothing in the
    repository), offline, with the setuptools of this environment."""
    tmp = tmp_path_factory.mktemp("wheel")
    for name in source_files():
        (tmp / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp / "src" / name)
    pip("wheel", "--no-build-isolation", "--wheel-dir", str(tmp / "dist"), str(tmp / "src"))
    (built,) = (tmp / "dist").glob("pgrag-*.whl")
    return built


def test_wheel_holds_pgrag_only_with_every_source_file(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert {n.split("/")[0] for n in names} - dist_info == {"pgrag"}

    expected = set()
    for name in source_files():
        folder, _, rest = name.partition("/")
        if folder in MAPPED and rest:
            expected.add(f"{MAPPED[folder]}/{rest}")
    shipped = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert shipped == expected
    assert any(n.startswith("pgrag/migrations/versions/0001_") for n in shipped)

    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert re.search(r"\[console_scripts\]\s*\npgrag = pgrag\.cli:main", text), text


def test_installed_wheel_finds_its_migrations_and_runs(wheel: Path, tmp_path: Path) -> None:
    """Installed elsewhere and run from another folder, the package reads the migrations it
    carries: the same revisions as the repository's."""
    from alembic.script import ScriptDirectory

    site = tmp_path / "site"
    pip("install", "--target", str(site), str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = (
        "from alembic.script import ScriptDirectory\n"
        "from pgrag.runtime import db\n"
        "print(db.MIGRATIONS)\n"
        "print(*sorted(r.revision for r in ScriptDirectory(str(db.MIGRATIONS)).walk_revisions()))"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert Path(out[0]) == site / "pgrag" / "migrations"
    repository = ScriptDirectory(str(ROOT / "migrations")).walk_revisions()
    assert out[1].split() == sorted(r.revision for r in repository)

    shown = subprocess.run(
        [str(site / "bin" / "pgrag"), "--help"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ingest" in shown and "search" in shown


# A module of the top-level `workers` or `api` named in text (a `celery -A` or `uvicorn`
# argument, a dotted path): such names resolve in a source checkout only.
TOP_LEVEL_NAME = re.compile(r"(?<![\w./-])(workers|api)\.(app|tasks|auth|limits|routes)\b")


def test_code_and_docs_name_workers_and_api_inside_pgrag() -> None:
    """No import of a top-level `workers` or `api` module, and no such module named in code,
    configuration or docs: the wheel has none (they are `pgrag.workers`, `pgrag.api`)."""
    wrong = []
    for name in source_files():
        path = ROOT / name
        if name.endswith(".py"):
            for node in ast.walk(ast.parse(path.read_text(), name)):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                wrong += [
                    f"{name}:{node.lineno}: import {m}"
                    for m in modules
                    if m.split(".")[0] in ("workers", "api")
                ]
        if path.suffix in (".py", ".md", ".yml", ".toml", ".cfg", "") or name == "Dockerfile":
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if TOP_LEVEL_NAME.search(line):
                    wrong.append(f"{name}:{n}: {line.strip()}")
    assert not wrong, "\n".join(wrong)
