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
    "recorder": set(SERVICES),  # the ingestors call it; it knows none of them
    **{pkg: set(SERVICES) - {pkg} for pkg in SERVICES},
}


def imported_modules(source: str) -> set[str]:
    """Full dotted names of every absolute import in ``source`` (``from a.b import c`` gives ``a.b`` and
    ``a.b.c``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source``."""
    return {name.split(".")[0] for name in imported_modules(source)}


def test_imported_packages_sees_every_form() -> None:
    src = "import gateway.ws\nfrom matcher import engine\ndef f():\n    import ingestor as i\nfrom . import x\n"
    assert imported_packages(src) == {"gateway", "matcher", "ingestor"}


def bad_imports(folder: str, forbidden: set[str]) -> list[str]:
    """``folder``'s imports of a module in ``forbidden`` or below one (``gateway`` covers ``gateway.rest``)."""
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no sources under {folder}/"
    return [f"{path.relative_to(ROOT)} imports {mod}" for path in files
            for mod in sorted(imported_modules(path.read_text(encoding="utf-8")))
            if any(mod == f or mod.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package: str) -> None:
    bad = bad_imports(package, FORBIDDEN[package])
    assert not bad, "\n".join(bad)


# Inside the gateway: transports (rest, realtime) over services over the domain (shared). The two transports
# never import each other, and the services know neither.
GATEWAY_FORBIDDEN: dict[str, set[str]] = {
    "gateway/rest": {"gateway.realtime"},
    "gateway/realtime": {"gateway.rest"},
    "gateway/services": {"gateway.rest", "gateway.realtime"},
}


@pytest.mark.parametrize("layer", sorted(GATEWAY_FORBIDDEN))
def test_gateway_layers(layer: str) -> None:
    bad = bad_imports(layer, GATEWAY_FORBIDDEN[layer])
    assert not bad, "\n".join(bad)


def test_no_gateway_module_is_too_long() -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted((ROOT / "gateway").rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420]
    assert not long, "\n".join(long)


def _raised_codes() -> dict[str, str]:
    """Every literal error code of the code base: ``DomainError("code", ...)`` and ``code_of("code")``."""
    out: dict[str, str] = {}
    for package in ("shared", "gateway"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                        and node.func.id in ("DomainError", "code_of") and node.args \
                        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    out[node.args[0].value] = str(path.relative_to(ROOT))
    return out


def test_every_error_code_has_an_http_status() -> None:
    from gateway.rest.errors import STATUS

    codes = _raised_codes()
    assert len(codes) > 30
    # The WebSocket's own refusals never reach REST: they need no status.
    ws_only = {"already_subscribed", "not_subscribed", "too_many_subscriptions", "auth_failed", "bad_half_life",
               "unknown_topic", "unknown_stream", "unknown_exchange", "unknown_interval", "bad_depth"}
    missing = sorted(f"{code} ({where})" for code, where in codes.items() if code not in STATUS and code not in ws_only)
    assert not missing, "codes without an HTTP status in gateway.rest.errors.STATUS: " + ", ".join(missing)


def test_status_table() -> None:
    from gateway.rest.errors import status_of

    assert [status_of(c) for c in ("order_not_found", "order_not_open", "insufficient_balance", "invalid_price",
                                   "not_authenticated", "busy", "invalid_side")] == [404, 409, 400, 422, 401, 503, 422]
