"""Assembler stage: raw records to complete, parsed and interpreted events."""
