"""Record types every stage reasons about: which close an event and which stand alone."""

from __future__ import annotations

EOE_TYPE = 1320  # the end of a multi-record event
LOGIN_TYPE = 1006  # below 1300, yet written in a syscall's event (with its EOE)
KERNEL_TYPE = 2000  # the kernel's own start-up message: alone


def completes_alone(record_type: int) -> bool:
    """True for record types that never have companion records (complete at once)."""
    if record_type == LOGIN_TYPE:
        return False
    return not 1300 <= record_type < 2100 or record_type == KERNEL_TYPE
