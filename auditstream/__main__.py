"""``python -m auditstream``: the command line."""

from auditstream.cli import main

raise SystemExit(main())
