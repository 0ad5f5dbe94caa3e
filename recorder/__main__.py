"""``python -m recorder ls [PATH ...]`` (``recorder/cli.py``)."""

from __future__ import annotations

import sys

from recorder.cli import main

sys.exit(main())
