/* treekeeper.native_enrich: the common case of ProcessTable._act for a fork, in C.
 *
 * Included by enrich.c. Reference: treekeeper/tree.py (_act, _fork, _insert, _set_parent,
 * entity_id) and treekeeper/namespaces.py (fork_returns_namespaced_pid). The code here
 * takes a fork (fork, vfork, clone) by a host process of no container and no runtime role,
 * whose child pid is new to the table or last belonged to a process that exited; every
 * other case (clone3, CLONE_PARENT, a namespace to ask about, a placeholder to merge, a
 * live process to retire, a full table, a doc value Python would parse more leniently) is
 * declined before anything changes, and _act does it in Python.
 */
#include "sha256.h"

enum { FORK_NOTHING, FORK_THREAD, FORK_CHILD };

typedef struct {
    int kind;
    PyObject *table;    /* borrowed */
    PyObject *caller;   /* borrowed */
    PyObject *existing; /* borrowed, NULL: none */
    int64_t child_pid, at_ms, flags;
    int has_flags;
} ForkPlan;

#define CLONE_PARENT_FLAG 0x8000
#define CLONE_THREAD_FLAG 0x10000
#define CLONE_NEWPID_FLAG 0x20000000

/* tree.entity_id(host, pid, start_ms): 22 characters of URL-safe base64; NULL with an
 * exception (a host that is not UTF-8 encodable raises UnicodeEncodeError, as in Python). */
static PyObject *entity_id_text(PyObject *host, int64_t pid, int64_t start_ms)
{
    Py_ssize_t size;
    const char *name = PyUnicode_AsUTF8AndSize(host, &size);
    if (name == NULL)
        return NULL;
    char numbers[48];
    int tail = snprintf(numbers, sizeof numbers, "|%lld|%lld", (long long)pid,
                        (long long)start_ms);
    unsigned char small[256], *message = small;
    size_t length = (size_t)size + (size_t)tail;
    if (length > sizeof small && (message = PyMem_Malloc(length)) == NULL)
        return PyErr_NoMemory();
    memcpy(message, name, (size_t)size);
    memcpy(message + size, numbers, (size_t)tail);
    unsigned char digest[32];
    sha256(message, length, digest);
    if (message != small)
        PyMem_Free(message);
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char text[24];
    int at = 0;
    for (int i = 0; i < 15; i += 3) { /* 15 bytes: 20 characters */
        uint32_t v = (uint32_t)digest[i] << 16 | (uint32_t)digest[i + 1] << 8 | digest[i + 2];
        text[at++] = alphabet[v >> 18];
        text[at++] = alphabet[(v >> 12) & 63];
        text[at++] = alphabet[(v >> 6) & 63];
        text[at++] = alphabet[v & 63];
    }
    text[at++] = alphabet[digest[15] >> 2]; /* the 16th byte: 2 characters, no padding */
    text[at++] = alphabet[(digest[15] & 3) << 4];
    return PyUnicode_FromStringAndSize(text, at);
}

/* Digits of ``base`` (10 or 16) only, at most ``most`` of them: 1 and *out, else 0 (Python's
 * int(x, base) also takes signs, spaces, underscores and a 0x prefix: those go to Python). */
static int plain_number(PyObject *text, int base, Py_ssize_t most, int64_t *out)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        return 0;
    Py_ssize_t size = PyUnicode_GET_LENGTH(text);
    const unsigned char *c = PyUnicode_1BYTE_DATA(text);
    if (size < 1 || size > most)
        return 0;
    int64_t value = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        int digit = c[i] >= '0' && c[i] <= '9'               ? c[i] - '0'
                    : base == 16 && c[i] >= 'a' && c[i] <= 'f' ? c[i] - 'a' + 10
                    : base == 16 && c[i] >= 'A' && c[i] <= 'F' ? c[i] - 'A' + 10
                                                               : -1;
        if (digit < 0)
            return 0;
        value = value * base + digit;
    }
    *out = value;
    return 1;
}

static inline int plain_decimal(PyObject *text, int64_t *out)
{
    return plain_number(text, 10, 18, out);
}

static inline int plain_hex(PyObject *text, int64_t *out)
{
    return plain_number(text, 16, 15, out);
}

/* A doc value: absent or None (0), an exact str (1, *out borrowed), else -1 (decline). */
static int optional_str(PyObject *section, PyObject *key, PyObject **out)
{
    *out = section != NULL ? PyDict_GetItemWithError(section, key) : NULL;
    if (*out == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (*out == Py_None)
        return 0;
    return PyUnicode_CheckExact(*out) ? 1 : -1;
}

/* Decide _act for a fork by ``caller`` (the event's known actor): 1 with *plan when the
 * code here does it, 0 to leave it to Python (nothing changed). */
static int plan_fork(Table *t, PyObject *table, PyObject *doc, PyObject *syscall,
                     PyObject *caller, int64_t at_ms, ForkPlan *plan)
{
    memset(plan, 0, sizeof *plan);
    plan->table = table;
    plan->caller = caller;
    plan->at_ms = at_ms;
    PyObject *process, *auditd, *data, *result, *exit, *a0, *comm;
    if (section_of(doc, s_process, &process) < 0 || section_of(doc, s_auditd, &auditd) < 0 ||
        section_of(auditd, s_data, &data) < 0)
        return 0;
    int has_result = optional_str(auditd, s_result, &result);
    if (has_result < 0 || (has_result == 0 && result != NULL))
        return 0; /* result=None: != "fail" all the same, but rare: Python */
    exit = data != NULL ? PyDict_GetItemWithError(data, s_exit) : NULL;
    if (exit == NULL && PyErr_Occurred())
        return 0;
    if (has_result && PyUnicode_Compare(result, s_fail) == 0) {
        plan->kind = FORK_NOTHING; /* a failed fork creates nothing */
        return 1;
    }
    if (exit == NULL || exit == Py_None) {
        plan->kind = FORK_NOTHING; /* no child pid: nothing to create */
        return 1;
    }
    if (!plain_decimal(exit, &plan->child_pid) || plan->child_pid == 0)
        return 0;
    int is_clone = PyUnicode_Compare(syscall, s_clone) == 0;
    if (!is_clone && PyUnicode_Compare(syscall, s_fork) != 0 &&
        PyUnicode_Compare(syscall, s_vfork) != 0)
        return 0; /* clone3 (a tentative child), or an error */
    if (is_clone) {
        int has_a0 = optional_str(data, s_a0, &a0);
        if (has_a0 < 0 || (has_a0 == 0 && a0 != NULL) ||
            (has_a0 && !plain_hex(a0, &plan->flags)))
            return 0;
        plan->has_flags = has_a0;
    }
    if (plan->has_flags && (plan->flags & CLONE_THREAD_FLAG)) {
        int64_t ignored;
        if (!i64_of(slot(t->stats, stats_offsets[ST_THREADS_IGNORED]), &ignored))
            return 0;
        plan->kind = FORK_THREAD;
        return 1;
    }
    if (plan->has_flags && (plan->flags & CLONE_PARENT_FLAG))
        return 0;
    /* The caller: of the host, no container, no runtime role (namespaces, _set_parent's shim,
     * crun's container init are Python's), nothing to ask /proc about. */
    PyObject *pid_ns = pslot(caller, P_PID_NS), *parent;
    if (pslot(caller, P_CONTAINER) != Py_None || pslot(caller, P_ROLE) != role_none ||
        pslot(caller, P_MANAGED) == NULL || pid_ns == NULL || pid_ns == pidns_nested)
        return 0;
    if (pid_ns == pidns_unknown) {
        PyObject *source = PyDict_GetItemWithError(t->dict, s_proc_source);
        if (source == NULL || source != Py_None) {
            PyErr_Clear();
            return 0; /* live: /proc says which namespace (namespaces.probe) */
        }
        if (table_get(t, pslot(caller, P_PARENT), &parent) < 0 ||
            (parent != NULL && pslot(parent, P_PID_NS) != pidns_unknown &&
             pslot(parent, P_PID_NS) != pidns_host))
            return 0;
        int has_comm = optional_str(process, s_name, &comm);
        if (has_comm < 0 || (has_comm && PyUnicode_Compare(comm, s_runc_init_stage) == 0))
            return 0;
    } else if (pid_ns != pidns_host) {
        return 0;
    }
    /* The child pid: new, or last held by a process that exited before this fork. */
    PyObject *child_pid = PyLong_FromLongLong(plan->child_pid);
    if (child_pid == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *key = PyDict_GetItemWithError(t->current, child_pid);
    Py_DECREF(child_pid);
    if (key == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (key != NULL) {
        PyObject *existing;
        int64_t started, exited;
        if (table_get(t, key, &existing) < 0)
            return 0;
        if (existing != NULL) {
            PyObject *started_obj = pslot(existing, P_STARTED_AT);
            if (pslot(existing, P_INFERRED) != Py_False ||
                pslot(existing, P_TENTATIVE) != Py_False || started_obj == NULL ||
                (started_obj != Py_None && (!i64_of(started_obj, &started) || started > at_ms)) ||
                !i64_of(pslot(existing, P_EXITED_AT), &exited) ||
                key_of(existing, (int64_t[2]){0, 0}) < 0)
                return 0;
            plan->existing = existing;
        }
    }
    /* _insert must not evict, and every field the child copies must be set. */
    int64_t limit, created;
    if (!i64_of(slot(t->config, config_offsets[CF_MAX_PROCESSES]), &limit) ||
        PyDict_GET_SIZE(t->processes) + 1 > limit ||
        !i64_of(slot(t->stats, stats_offsets[ST_PROCESSES_CREATED]), &created) ||
        key_of(caller, (int64_t[2]){0, 0}) < 0)
        return 0;
    PyObject *children = pslot(caller, P_CHILDREN); /* unset: del proc.children */
    if (children == NULL || !PySet_CheckExact(children))
        return 0;
    const int copied[5] = {P_EXECUTABLE, P_NAME, P_ARGS, P_CWD, P_TITLE};
    for (int i = 0; i < 5; i++)
        if (pslot(caller, copied[i]) == NULL)
            return 0;
    PyObject *host = slot(t->config, config_offsets[CF_HOST]);
    if (host == NULL || !PyUnicode_CheckExact(host))
        return 0;
    plan->kind = FORK_CHILD;
    return 1;
}

/* Add 1 to a TreeStats counter (an exact int, checked by the plan). */
static int bump_stat(Table *t, int field)
{
    PyObject **counter = (PyObject **)((char *)t->stats + stats_offsets[field]);
    PyObject *bumped = PyNumber_Add(*counter, one);
    if (bumped == NULL)
        return -1;
    Py_SETREF(*counter, bumped);
    return 0;
}

static PyObject *pair_of(int64_t a, int64_t b)
{
    PyObject *x = PyLong_FromLongLong(a), *y = x ? PyLong_FromLongLong(b) : NULL;
    PyObject *pair = y ? PyTuple_Pack(2, x, y) : NULL;
    Py_XDECREF(x);
    Py_XDECREF(y);
    return pair;
}

/* Carry out a plan: the lifecycle docs (a new list), NULL with an exception. */
static PyObject *do_fork(Table *t, ForkPlan *plan)
{
    PyObject *out = PyList_New(0);
    if (out == NULL || plan->kind == FORK_NOTHING)
        return out;
    PyObject *caller = plan->caller;
    if (plan->kind == FORK_THREAD) {
        pslot_set(caller, P_MAYBE_THREADED, Py_NewRef(Py_True));
        if (bump_stat(t, ST_THREADS_IGNORED) < 0)
            Py_CLEAR(out);
        return out;
    }
    int64_t start = plan->at_ms, caller_key[2];
    /* key: the child's (processes, current, the caller's children); creator: the caller's
     * (the child's creator and parent). Equal tuples where Python makes one per use. */
    PyObject *key = NULL, *child = NULL, *eid = NULL, *pid = NULL, *at = NULL, *creator = NULL;
    key_of(caller, caller_key);
    for (;;) { /* key = (child_pid, at_ms); while key in processes: one ms later */
        Py_XDECREF(key);
        key = pair_of(plan->child_pid, start);
        if (key == NULL)
            goto error;
        int taken = PyDict_Contains(t->processes, key);
        if (taken < 0)
            goto error;
        if (!taken)
            break;
        start++;
    }
    eid = entity_id_text(slot(t->config, config_offsets[CF_HOST]), plan->child_pid, start);
    pid = PyTuple_GET_ITEM(key, 0);
    at = PyLong_FromLongLong(plan->at_ms);
    creator = pair_of(caller_key[0], caller_key[1]);
    if (eid == NULL || at == NULL || creator == NULL)
        goto error;
    PyObject *pid_ns = plan->has_flags && (plan->flags & CLONE_NEWPID_FLAG) ? pidns_nested
                                                                           : pidns_unknown;
    PyObject *args[16] = {pid,
                          PyTuple_GET_ITEM(key, 1),
                          eid,
                          creator,
                          pslot(caller, P_EXECUTABLE),
                          pslot(caller, P_NAME),
                          pslot(caller, P_ARGS),
                          pslot(caller, P_CWD),
                          pslot(caller, P_TITLE),
                          at,
                          at,
                          at,
                          Py_False,
                          pslot(caller, P_ROLE),
                          pslot(caller, P_MANAGED),
                          pid_ns};
    child = PyObject_Vectorcall((PyObject *)process_type, args, 0, fork_kwnames);
    if (child == NULL)
        goto error;
    if (Py_TYPE(child) != process_type) {
        PyErr_SetString(PyExc_TypeError, "Process() made another type");
        goto error;
    }
    /* make_current: previous is the pid's last process; the pid is now the child's */
    PyObject *previous = Py_None;
    if (plan->existing != NULL) {
        int64_t old[2];
        key_of(plan->existing, old);
        previous = pair_of(old[0], old[1]);
        if (previous == NULL)
            goto error;
    } else {
        Py_INCREF(previous);
    }
    pslot_set(child, P_PREVIOUS, previous);
    if (PyDict_SetItem(t->current, pid, key) < 0 || PyDict_SetItem(t->processes, key, child) < 0 ||
        bump_stat(t, ST_PROCESSES_CREATED) < 0)
        goto error;
    /* _set_parent(child, caller.pid, caller): no old parent, no shim */
    pslot_set(child, P_PPID, Py_NewRef(pslot(caller, P_PID)));
    pslot_set(child, P_PARENT, Py_NewRef(creator));
    if (PySet_Add(pslot(caller, P_CHILDREN), key) < 0 ||
        append_lifecycle_doc(t, plan->table, s_process_started, child, at, plan->at_ms, out) < 0)
        goto error;
    goto done;
error:
    Py_CLEAR(out);
done:
    Py_XDECREF(key);
    Py_XDECREF(child);
    Py_XDECREF(eid);
    Py_XDECREF(at);
    Py_XDECREF(creator);
    return out;
}
