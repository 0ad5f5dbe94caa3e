"""``python -m client watch|orders|balance``: live tables in the terminal (``client/cli.py``)."""
from client.cli import main

raise SystemExit(main())
