"""``python -m treekeeper --config FILE``: run the tree keeper and the sinks alone."""

from auditstream.stage import stage_main
from treekeeper.stage import run

raise SystemExit(stage_main("treekeeper", run))
