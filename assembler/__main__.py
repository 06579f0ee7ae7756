"""``python -m assembler --config FILE [--index N]``: run one assembler alone."""

from assembler.stage import run
from auditstream.stage import stage_main

raise SystemExit(stage_main("assembler", run))
