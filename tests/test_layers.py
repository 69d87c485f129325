"""The package's layers as docs/design.md lists them: no import upward, no private module across packages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lightning_vitx

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_vitx"


def layers() -> dict[str, int]:
    """``{top-level module or package: layer}`` from docs/design.md's numbered list between the layer markers."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("<!-- layers:begin")[1].split("<!-- layers:end -->")[0]
    found: dict[str, int] = {}
    for number, names in re.findall(r"^(\d+)\. ((?:`[\w]+`(?:, )?)+):", block, flags=re.MULTILINE):
        for name in re.findall(r"`(\w+)`", names):
            found[name] = int(number)
    return found


def runtime_imports(path: Path) -> list[str]:
    """Every ``lightning_vitx...`` module the file imports at run time (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    modules = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lightning_vitx":
            if node.module == "lightning_vitx":  # from lightning_vitx import adapters, __version__, ...
                modules += [f"lightning_vitx.{alias.name}" for alias in node.names]
            else:
                modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names if alias.name.split(".")[0] == "lightning_vitx"]
    return modules


def owner(path: Path) -> str:
    """The top-level module or package a file belongs to (``adapters``, ``_state``, ``__init__``, ...)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_the_design_page_names_every_top_level_module_once():
    listed = layers()
    present = {owner(path) for path in PACKAGE.rglob("*.py")}
    missing, gone = present - set(listed), set(listed) - present
    assert not missing and not gone, f"docs/design.md's layers: missing {missing}, gone {gone}"


def test_no_import_goes_up_a_layer():
    listed = layers()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = owner(path)
        for module in runtime_imports(path):
            there = module.split(".")[1]
            if listed[there] > listed[here]:
                upward.append(f"{path.relative_to(ROOT)} imports {module} (layer {listed[there]} > {listed[here]})")
    assert not upward, "\n".join(upward)


def test_no_private_module_of_another_package_is_imported():
    crossing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = owner(path)
        for module in runtime_imports(path):
            parts = module.split(".")
            if len(parts) > 2 and parts[1] != here and any(part.startswith("_") for part in parts[2:]):
                crossing.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not crossing, "\n".join(crossing)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The parser finds imports in functions and skips TYPE_CHECKING blocks (what the two tests above rely on)."""
    source = tmp_path / "example.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lightning_vitx.callbacks import ExplainabilityMonitor\n"
        "def f():\n    from lightning_vitx.rendering import overlay\n    import lightning_vitx.metrics._common\n"
    )
    assert runtime_imports(source) == ["lightning_vitx.rendering", "lightning_vitx.metrics._common"]


def test_the_version_is_pyprojects():
    (version,) = re.findall(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
    assert lightning_vitx.__version__ == version
