"""Receiver stage: the audit source (kernel netlink, audit.log, stdin, auditd socket) to raw record batches."""
