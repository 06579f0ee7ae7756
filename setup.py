"""C extensions for the per-record and per-event work (the Python modules stay the reference).

Optional: on a machine without a C compiler or Python headers the build is skipped with a
warning and the pure-Python path runs (docs/performance.md, "Native event building").
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
# auditstream/csrc/pyclass.h: reading the Python classes a C module mirrors (shared).
_SHARED = {"include_dirs": ["auditstream/csrc"]}
_PYCLASS = "auditstream/csrc/pyclass.h"
_OUT_BUFFER = "auditstream/csrc/out_buffer.h"
_CIVIL_DAYS = "auditstream/csrc/civil_days.h"  # dates from day counts (ecs.c, enrich.c)
_HASH_HEX = "auditstream/csrc/hash_hex.h"  # a head's record hashes as text (ecs, doc_text, dedupe)

setup(
    ext_modules=[
        Extension(
            "assembler.native_parse",
            ["assembler/csrc/parse.c"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "assembler.native_recent",
            ["assembler/csrc/recent.c"],
            depends=["assembler/csrc/recent_keys.h"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "assembler.native_runs",
            ["assembler/csrc/runs.c"],
            depends=[_PYCLASS, "assembler/csrc/recent_keys.h"],
            **_SHARED,
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "assembler.native_coalesce",
            ["assembler/csrc/coalesce.c"],
            depends=[
                "assembler/csrc/coalesce_text.h",
                "assembler/csrc/coalesce_execve.h",
                "assembler/csrc/coalesce_normalize.h",
                "assembler/csrc/coalesce_fused.h",
                "assembler/csrc/fused_event.h",
                "assembler/csrc/escape.h",
                _PYCLASS,
            ],
            **_SHARED,
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "assembler.native_ecs",
            ["assembler/csrc/ecs.c"],
            depends=[
                "assembler/csrc/escape.h",
                "assembler/csrc/ecs_write.h",
                "assembler/csrc/ecs_event.h",
                "assembler/csrc/ecs_fused.h",
                "assembler/csrc/fused_event.h",
                _OUT_BUFFER,
                _PYCLASS,
                _CIVIL_DAYS,
                _HASH_HEX,
            ],
            **_SHARED,
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "auditstream.native_doc_text",
            ["auditstream/csrc/doc_text.c"],
            depends=[_HASH_HEX],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "auditstream.native_wire",
            ["auditstream/csrc/wire.c"],
            depends=[_OUT_BUFFER],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "receiver.native_lines",
            ["receiver/csrc/lines.c"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "receiver.native_datagrams",
            ["receiver/csrc/datagrams.c"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "receiver.native_shards",
            ["receiver/csrc/shards.c"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "treekeeper.native_reorder",
            ["treekeeper/csrc/reorder.c"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "treekeeper.native_fingerprints",
            ["treekeeper/csrc/fingerprints.c"],
            depends=[_HASH_HEX],
            **_SHARED,
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "treekeeper.native_enrich",
            ["treekeeper/csrc/enrich.c"],
            depends=[
                "treekeeper/csrc/enrich_lifecycle.h",
                "treekeeper/csrc/enrich_fork.h",
                "treekeeper/csrc/enrich_exit.h",
                "treekeeper/csrc/enrich_exec.h",
                "treekeeper/csrc/enrich_apply.h",
                "treekeeper/csrc/enrich_memo.h",
                "treekeeper/csrc/sha256.h",
                _PYCLASS,
                _CIVIL_DAYS,
            ],
            **_SHARED,
            optional=True,
            extra_compile_args=_FLAGS,
        ),
    ]
)
