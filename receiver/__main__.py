"""``python -m receiver --config FILE``: run the receiver stage alone."""

from auditstream.stage import stage_main
from receiver.stage import run

raise SystemExit(stage_main("receiver", run))
