"""Hypothesis settings shared by the fuzz tests: bounded in ``make test``, longer on demand.

``FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz_*.py`` runs every property with that many
examples (the default keeps the whole fuzz set well under 60 s).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(default_examples: int) -> settings:
    return settings(max_examples=FUZZ_EXAMPLES or default_examples, deadline=None, derandomize=not FUZZ_EXAMPLES,
                    suppress_health_check=list(HealthCheck), database=None)
