"""The package's shape, checked in `make lint`: small modules, few type: ignore, the layout
the README and docs/architecture.md describe."""

from __future__ import annotations

import pathlib

PROJECT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = PROJECT / "sockherd"
MAX_MODULE_LINES = 400
MAX_TYPE_IGNORES = 10


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_400_lines():
    sizes = {str(p.relative_to(PROJECT)): len(p.read_text().splitlines()) for p in _modules()}
    assert {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_the_package_has_at_most_10_type_ignores():
    found = [
        f"{path.relative_to(PROJECT)}:{number}"
        for path in _modules()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line
    ]
    assert len(found) <= MAX_TYPE_IGNORES, found


def _readme_layout() -> set[str]:
    """The paths the README's layout block names: top-level lines name a path, indented
    lines a file inside the folder named above them."""
    readme = (PROJECT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named, folder = set(), ""
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 10):
            continue  # a description's continuation
        word = line.split()[0]
        if line.startswith("  "):
            named.add(folder + word)
        else:
            named.add(word)
            folder = word if word.endswith("/") else folder
    return named


def test_the_readme_layout_names_every_package_module():
    named = {n for n in _readme_layout() if n.startswith("sockherd/")}
    modules = {str(p.relative_to(PROJECT)) for p in _modules() if p.name != "__init__.py"}
    modules |= {"sockherd/__init__.py"}
    folders = {f"sockherd/{p.name}/" for p in PACKAGE.iterdir() if p.is_dir()}
    folders.discard("sockherd/__pycache__/")
    assert (modules | folders) - named == set(), "missing from the README's layout"
    assert named - (modules | folders) == set(), "stale entries in the README's layout"
