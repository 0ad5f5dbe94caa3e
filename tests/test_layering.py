"""The import rules between the parts: ``shared`` imports none of ingestor/gateway/matcher, and those three
never import each other (they talk through Redis). Checked on the source with ``ast``, imports inside
functions included."""

from __future__ import annotations

import ast

import pytest

from shared.settings import ROOT

SERVICES = ("ingestor", "gateway", "matcher")
FORBIDDEN: dict[str, set[str]] = {
    "shared": set(SERVICES),
    **{pkg: set(SERVICES) - {pkg} for pkg in SERVICES},
}


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_imported_packages_sees_every_form() -> None:
    src = "import gateway.ws\nfrom matcher import engine\ndef f():\n    import ingestor as i\nfrom . import x\n"
    assert imported_packages(src) == {"gateway", "matcher", "ingestor"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    bad = []
    for path in files:
        wrong = imported_packages(path.read_text(encoding="utf-8")) & FORBIDDEN[package]
        bad += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(wrong)]
    assert not bad, "\n".join(bad)
