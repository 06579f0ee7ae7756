"""Tree keeper stage: the live process tree, container attribution, enrichment, fan-out to sinks."""
