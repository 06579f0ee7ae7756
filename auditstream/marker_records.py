"""Record types below zero: markers the receiver puts into the record stream, which the
assembler turns into marker events (docs/internals.md). The kernel's types are positive."""

KERNEL_LOST_TYPE = -1  # the kernel's lost counter rose (live)
SOCKET_OVERRUN_TYPE = -2  # the netlink socket overran (live)
RESTART_GAP_TYPE = -3  # a restarted receiver names the serials its predecessor lost
DAMAGED_INPUT_TYPE = -4  # a replayed file read only up to a damage
SOURCE_RECONNECT_TYPE = -5  # auditd's af_unix socket came back: what it sent meanwhile is lost
