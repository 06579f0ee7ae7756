/*
 * The fused event: what assembler.native_coalesce hands assembler.native_ecs for an event it
 * coalesces without making the Coalesced object and its dicts (docs/performance.md,
 * "Thirty-fifth pass").
 *
 * Why: building the Coalesced's data, user_ids and paths dicts, writing the doc's JSON from
 * them and freeing them was over half of the assembler's instructions per event. Here
 * native_coalesce reads the records into fields that point into the records' own bytes,
 * runs the summary and ECS step on those, and native_ecs writes the doc from them.
 *
 * The contract: for the records it fills an event for, native_ecs's write from it gives the
 * bytes (doc, head, process's place) that write_doc(records, coalesce(records), completed_by)
 * gives. Anything else is declined (0) and goes the Coalesced way, which stays the
 * reference. tests/test_fused_event.py holds the two equal over every corpus log, the
 * generated logs and a loadgen recording.
 *
 * The API travels in a capsule, assembler.native_coalesce._fused_api.
 */
#ifndef AUDITSTREAM_FUSED_EVENT_H
#define AUDITSTREAM_FUSED_EVENT_H

#define FUSED_API_VERSION 2 /* 2: str_of */
#define FUSED_CAPSULE "assembler.native_coalesce._fused_api"

/* A value: ASCII text (a field's raw value, quotes removed) when str is NULL, else str
 * (borrowed: an interpreted value the event owns until it is released). */
typedef struct {
    const char *text;
    Py_ssize_t len;
    PyObject *str;
} FusedText;

typedef struct {
    const char *key; /* ASCII */
    Py_ssize_t key_len;
    FusedText value;
} FusedField;

/* The Coalesced attributes the doc writer reads as objects, by their dataclass names. */
#define FUSED_SLOTS(X)                                                                        \
    X(FE_SEC, "sec") X(FE_MSEC, "msec") X(FE_SERIAL, "serial") X(FE_NODE, "node")            \
    X(FE_CATEGORY, "category") X(FE_RECORD_TYPE, "record_type") X(FE_RESULT, "result")       \
    X(FE_SESSION, "session") X(FE_TAGS, "tags") X(FE_ACTOR_PRIMARY, "actor_primary")         \
    X(FE_ACTOR_SECONDARY, "actor_secondary") X(FE_ACTION, "action")                          \
    X(FE_OBJECT_TYPE, "object_type") X(FE_OBJECT_PRIMARY, "object_primary")                  \
    X(FE_OBJECT_SECONDARY, "object_secondary") X(FE_HOW, "how") X(FE_PID, "pid")             \
    X(FE_PPID, "ppid") X(FE_TITLE, "title") X(FE_NAME, "name") X(FE_EXE, "exe")              \
    X(FE_CWD, "cwd") X(FE_ARGS, "args") X(FE_ECS_CATEGORY, "ecs_category")                   \
    X(FE_ECS_TYPE, "ecs_type") X(FE_ECS_OUTCOME, "ecs_outcome") X(FE_DIRECTION, "direction")

#define FUSED_SLOT_ENUM(id, name) id,
enum { FUSED_SLOTS(FUSED_SLOT_ENUM) FE_COUNT };
#undef FUSED_SLOT_ENUM

#define FUSED_MAX_PATHS 16
/* The file object's members, in _set_file_object's order. */
enum { FF_PATH, FF_DEVICE, FF_INODE, FF_MODE, FF_UID, FF_GID, FF_COUNT };

typedef struct {
    PyObject *slot[FE_COUNT]; /* owned; each of the type write_doc reads */
    const FusedField *data;   /* auditd.data, in order, the process's fields lifted out */
    int n_data;
    const FusedField *ids; /* user_ids, in order */
    int n_ids;
    const FusedField *selinux; /* user_selinux (the subj parts, "subj_" cut off), in order */
    int n_selinux;
    const FusedField *path_fields; /* the PATH records' fields, one after the other */
    int path_start[FUSED_MAX_PATHS + 1]; /* paths[i]: path_fields[path_start[i] .. path_start[i + 1]) */
    int n_paths;
    int has_file;              /* the file object exists (it may still be empty) */
    FusedText file[FF_COUNT];  /* its members; len 0 and no str: absent */
} FusedEvent;

/* The index of key (ASCII, len bytes) in fields, or -1. */
static inline int fused_find(const FusedField *fields, int n, const char *key, Py_ssize_t len)
{
    for (int i = 0; i < n; i++)
        if (fields[i].key_len == len && memcmp(fields[i].key, key, (size_t)len) == 0)
            return i;
    return -1;
}

/* The value is the ASCII text lit. */
static inline int fused_text_is(const FusedText *t, const char *lit)
{
    Py_ssize_t n = (Py_ssize_t)strlen(lit);
    if (t->str == NULL)
        return t->len == n && memcmp(t->text, lit, (size_t)n) == 0;
    return PyUnicode_IS_ASCII(t->str) && PyUnicode_GET_LENGTH(t->str) == n &&
           memcmp(PyUnicode_1BYTE_DATA(t->str), lit, (size_t)n) == 0;
}

typedef struct {
    int version;
    /* 1: the event is filled (release it), 0: declined (nothing to release), -1: an error is
     * set (nothing to release). Not re-entrant: one event at a time. */
    int (*read)(PyObject *records, FusedEvent *event);
    void (*release)(FusedEvent *event);
    /* A value as a new str (short ones shared through native_coalesce's cache); NULL with
     * an exception. */
    PyObject *(*str_of)(const FusedText *value);
    PyCFunction coalesce; /* native_coalesce.coalesce: the C function this API goes with */
} FusedApi;

#endif
