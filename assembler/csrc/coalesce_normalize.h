/*
 * Part of assembler/csrc/coalesce.c: assembler/summarize.py's apply_normalization() in C, for the
 * events coalesce.c builds (record type "syscall"). Included by it once (one translation unit).
 *
 * Reference: assembler/summarize.py (apply_normalization, _choose_normalization, _first_present,
 * _apply_summary_fields, _ecs_source, _set_file_object, _set_socket_object) and
 * assembler/coalesced.py (Coalesced.entity, EcsEntity.set). The tables stay in Python: every call
 * reads summarize.SYSCALL_NORMALIZATIONS, _FALLBACK_SYSCALL_NORMALIZATION and
 * _INTERPRETER_PREFIXES from the module's dict (as the Python function does), and each
 * Normalization object met is read once into a NormSpec (keyed by the object, which is frozen and
 * kept alive here).
 *
 * Two steps: normalize_plan() only reads the event and decides (DECLINE leaves the event untouched
 * for the Python function); normalize_apply() then writes, in the Python function's order.
 *
 * Declined: a record type other than "syscall" (RECORD_TYPE_NORMALIZATIONS are never read here),
 * a Normalization of another type or with a shape not handled (fields not str / tuples of str,
 * a negative or huge object_path_index, an unknown ecs_copy source), more than NORM_MAX distinct
 * Normalization objects, non-str values where the Python code compares or joins them, a PATH
 * dict with a non-str key, an ecs_copy while ecs_entities is already set or to a slot that is not
 * in ECS_SLOTS (Python raises), and a Coalesced with an unset slot.
 */
#ifndef AUDITSTREAM_COALESCE_NORMALIZE_H
#define AUDITSTREAM_COALESCE_NORMALIZE_H

enum { SUM_SUBJECT_PRIMARY, SUM_SUBJECT_SECONDARY, SUM_OBJECT_PRIMARY, SUM_OBJECT_SECONDARY, SUM_HOW, N_SUMMARY };
static const char *const SUMMARY_ATTRS[N_SUMMARY] = {"subject_primary", "subject_secondary",
                                                     "object_primary", "object_secondary", "how"};
static const char *const SUMMARY_WHAT[N_SUMMARY] = {"subject primary", "subject secondary",
                                                    "object primary", "object secondary", "how"};

enum { OBJECT_OTHER, OBJECT_FILE, OBJECT_SOCKET };
enum { SRC_ACTOR_PRIMARY, SRC_ACTOR_SECONDARY, SRC_OBJECT_PRIMARY, SRC_OBJECT_SECONDARY, SRC_DATA, SRC_UID };
#define MAX_ECS_COPY 8

typedef struct {
    int source;       /* SRC_* */
    PyObject *key;    /* owned: the data / user_ids key of SRC_DATA, SRC_UID */
    PyObject *target; /* owned: the ECS slot */
} EcsCopy;

/* What apply_normalization reads of one Normalization (owned references to its values). */
typedef struct {
    PyObject *norm; /* owned: the Normalization; its address is the key */
    int supported;
    PyObject *action, *object_what, *ecs_kind, *ecs_category, *ecs_type;
    int object_kind;        /* OBJECT_*: object_what in ("file", "filesystem"), "socket", other */
    Py_ssize_t path_index;  /* object_path_index */
    PyObject *keys[N_SUMMARY];    /* tuples of str */
    PyObject *warning[N_SUMMARY]; /* _first_present's warning text, NULL for an empty tuple */
    PyObject *source_ip, *source_ip_warning;
    int ncopy;
    EcsCopy copy[MAX_ECS_COPY];
} NormSpec;

/* Normalization address -> spec, open addressing; never more than half full. */
#define NORM_TABLE_SIZE 512
#define NORM_MAX 256
static NormSpec *g_norm_table[NORM_TABLE_SIZE];
static int g_norm_count;

/* The Coalesced slots this step reads or writes. */
enum {
    CN_RECORD_TYPE, CN_DATA, CN_USER_IDS, CN_PATHS, CN_WARNINGS, CN_HOW, CN_ACTION, CN_OBJECT_TYPE,
    CN_OBJECT_PRIMARY, CN_OBJECT_SECONDARY, CN_ACTOR_PRIMARY, CN_ACTOR_SECONDARY, CN_ECS_KIND,
    CN_ECS_CATEGORY, CN_ECS_TYPE, CN_FILE, CN_SOURCE, CN_DIRECTION, CN_ECS_ENTITIES, CN_COUNT
};
static const char *const CN_NAMES[CN_COUNT] = {
    "record_type", "data", "user_ids", "paths", "warnings", "how", "action", "object_type",
    "object_primary", "object_secondary", "actor_primary", "actor_secondary", "ecs_kind",
    "ecs_category", "ecs_type", "file", "source", "direction", "ecs_entities",
};
static Py_ssize_t g_cn_offset[CN_COUNT];
#define CSLOT(event, k) (*(PyObject **)((char *)(event) + g_cn_offset[k]))

static PyObject *g_summarize;      /* assembler.summarize (its dict is read on every call) */
static PyObject *g_coalesced_mod;  /* assembler.coalesced (ECS_SLOTS) */
static PyTypeObject *g_normalization_type;
static PyObject *g_ecs_entity_type, *g_address_type, *g_unset_value;
static PyObject *g_mode_text[07777 + 1]; /* "%04o" of each mode, made on first use */
static unsigned long long g_norm_handled, g_norm_declined;

static PyObject *n_table, *n_fallback, *n_prefixes, *n_ecs_slots; /* module attribute names */
static PyObject *n_exe, *n_comm, *n_syscall, *n_nametype, *n_name, *n_rdev, *n_inode, *n_mode,
    *n_ouid, *n_ogid, *n_path, *n_device, *n_uid, *n_gid, *n_selinux, *n_socket_addr,
    *n_socket_path, *n_socket_port, *n_file, *n_ingress, *n_no_norm, *n_ip, *n_id, *n_entity_name;

static int member_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset) {
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name);
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX ||
        (((PyMemberDescrObject *)descr)->d_member->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a writable object slot", type->tp_name, name);
        return -1;
    }
    *offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    return 0;
}

static int normalize_init(void) {
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(n_table, "SYSCALL_NORMALIZATIONS");
    INTERN(n_fallback, "_FALLBACK_SYSCALL_NORMALIZATION");
    INTERN(n_prefixes, "_INTERPRETER_PREFIXES");
    INTERN(n_ecs_slots, "ECS_SLOTS");
    INTERN(n_exe, "exe");
    INTERN(n_comm, "comm");
    INTERN(n_syscall, "syscall");
    INTERN(n_nametype, "nametype");
    INTERN(n_name, "name");
    INTERN(n_rdev, "rdev");
    INTERN(n_inode, "inode");
    INTERN(n_mode, "mode");
    INTERN(n_ouid, "ouid");
    INTERN(n_ogid, "ogid");
    INTERN(n_path, "path");
    INTERN(n_device, "device");
    INTERN(n_uid, "uid");
    INTERN(n_gid, "gid");
    INTERN(n_selinux, "selinux");
    INTERN(n_socket_addr, "socket_addr");
    INTERN(n_socket_path, "socket_path");
    INTERN(n_socket_port, "socket_port");
    INTERN(n_file, "file");
    INTERN(n_ingress, "ingress");
    INTERN(n_no_norm, "no normalization found for event");
    INTERN(n_ip, "ip");
    INTERN(n_id, "id");
    INTERN(n_entity_name, "name");
#undef INTERN
    g_summarize = PyImport_ImportModule("assembler.summarize");
    g_coalesced_mod = g_summarize ? PyImport_ImportModule("assembler.coalesced") : NULL;
    PyObject *norm_type = g_coalesced_mod ? import_attr("assembler.normalizations", "Normalization") : NULL;
    if (norm_type == NULL)
        return -1;
    if (!PyType_Check(norm_type)) {
        Py_DECREF(norm_type);
        PyErr_SetString(PyExc_TypeError, "assembler.normalizations.Normalization is not a class");
        return -1;
    }
    g_normalization_type = (PyTypeObject *)norm_type;
    g_ecs_entity_type = PyObject_GetAttrString(g_coalesced_mod, "EcsEntity");
    g_address_type = g_ecs_entity_type ? PyObject_GetAttrString(g_coalesced_mod, "Address") : NULL;
    g_unset_value = g_address_type ? PyObject_GetAttrString(g_coalesced_mod, "UNSET") : NULL;
    if (g_unset_value == NULL)
        return -1;
    if (!PyUnicode_CheckExact(g_unset_value)) {
        PyErr_SetString(PyExc_TypeError, "assembler.coalesced.UNSET is not a str");
        return -1;
    }
    for (int k = 0; k < CN_COUNT; k++)
        if (member_offset(g_coalesced, CN_NAMES[k], &g_cn_offset[k]) < 0)
            return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Normalization -> NormSpec.                                                                  */

static int exact_str_tuple(PyObject *obj) {
    if (!PyTuple_CheckExact(obj))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); i++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(obj, i)))
            return 0;
    return 1;
}

/* f"failed to set {what} using keys=[{' '.join(keys)}] because they were not found" */
static PyObject *keys_warning(const char *what, PyObject *keys) {
    PyObject *separator = PyUnicode_FromString(" ");
    PyObject *joined = separator ? PyUnicode_Join(separator, keys) : NULL;
    Py_XDECREF(separator);
    PyObject *text = joined ? PyUnicode_FromFormat(
                                  "failed to set %s using keys=[%U] because they were not found",
                                  what, joined)
                            : NULL;
    Py_XDECREF(joined);
    return text;
}

static int str_is(PyObject *text, const char *ascii) {
    return PyUnicode_CheckExact(text) && PyUnicode_CompareWithASCIIString(text, ascii) == 0;
}

/* One ecs_copy pair as _ecs_source reads it: 1 handled, 0 not (Python raises), -1 error. */
static int read_copy(PyObject *pair, EcsCopy *copy) {
    static const char *const named[4] = {"subject.primary", "subject.secondary", "object.primary",
                                         "object.secondary"};
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !exact_str_tuple(pair))
        return 0;
    PyObject *reference = PyTuple_GET_ITEM(pair, 0);
    copy->target = PyTuple_GET_ITEM(pair, 1);
    Py_INCREF(copy->target);
    for (int k = 0; k < 4; k++)
        if (str_is(reference, named[k])) {
            copy->source = SRC_ACTOR_PRIMARY + k;
            return 1;
        }
    /* table, _, key = reference.partition(".") */
    Py_ssize_t length = PyUnicode_GET_LENGTH(reference);
    Py_ssize_t dot = PyUnicode_FindChar(reference, '.', 0, length, 1);
    if (dot == -2)
        return -1;
    PyObject *table = PyUnicode_Substring(reference, 0, dot < 0 ? length : dot);
    if (table == NULL)
        return -1;
    int source = str_is(table, "data") ? SRC_DATA : str_is(table, "uid") ? SRC_UID : -1;
    Py_DECREF(table);
    if (source < 0)
        return 0;
    copy->source = source;
    copy->key = dot < 0 ? PyUnicode_FromString("") : PyUnicode_Substring(reference, dot + 1, length);
    return copy->key ? 1 : -1;
}

/* Fill spec from norm: 0 (spec->supported says whether it can be used), -1 error. */
static int spec_read(NormSpec *spec, PyObject *norm) {
    if (Py_TYPE(norm) != g_normalization_type)
        return 0;
#define GET(field, name) if ((spec->field = PyObject_GetAttrString(norm, name)) == NULL) return -1
    GET(action, "action");
    GET(object_what, "object_what");
    GET(ecs_kind, "ecs_kind");
    GET(ecs_category, "ecs_category");
    GET(ecs_type, "ecs_type");
    GET(source_ip, "source_ip");
    for (int k = 0; k < N_SUMMARY; k++)
        GET(keys[k], SUMMARY_ATTRS[k]);
#undef GET
    if (!PyUnicode_CheckExact(spec->action) || !PyUnicode_CheckExact(spec->object_what) ||
        !PyUnicode_CheckExact(spec->ecs_kind) || !PyTuple_CheckExact(spec->ecs_category) ||
        !PyTuple_CheckExact(spec->ecs_type) || !exact_str_tuple(spec->source_ip))
        return 0;
    spec->object_kind = str_is(spec->object_what, "file") || str_is(spec->object_what, "filesystem")
                            ? OBJECT_FILE
                        : str_is(spec->object_what, "socket") ? OBJECT_SOCKET
                                                              : OBJECT_OTHER;
    for (int k = 0; k < N_SUMMARY; k++) {
        if (!exact_str_tuple(spec->keys[k]))
            return 0;
        if (PyTuple_GET_SIZE(spec->keys[k]) > 0 &&
            (spec->warning[k] = keys_warning(SUMMARY_WHAT[k], spec->keys[k])) == NULL)
            return -1;
    }
    if (PyTuple_GET_SIZE(spec->source_ip) > 0 &&
        (spec->source_ip_warning = keys_warning("source IP", spec->source_ip)) == NULL)
        return -1;
    PyObject *index = PyObject_GetAttrString(norm, "object_path_index");
    if (index == NULL)
        return -1;
    int overflow = 0;
    long long hint = PyLong_CheckExact(index) ? PyLong_AsLongLongAndOverflow(index, &overflow) : -1;
    Py_DECREF(index);
    if (PyErr_Occurred())
        return -1;
    if (overflow || hint < 0 || hint > (1 << 20))
        return 0;
    spec->path_index = (Py_ssize_t)hint;
    PyObject *copies = PyObject_GetAttrString(norm, "ecs_copy");
    if (copies == NULL)
        return -1;
    int rc = PyTuple_CheckExact(copies) && PyTuple_GET_SIZE(copies) <= MAX_ECS_COPY;
    for (Py_ssize_t i = 0; rc == 1 && i < PyTuple_GET_SIZE(copies); i++) {
        rc = read_copy(PyTuple_GET_ITEM(copies, i), &spec->copy[i]);
        spec->ncopy = (int)i + 1; /* the entry's references are released with the spec */
    }
    Py_DECREF(copies);
    if (rc < 0)
        return -1;
    spec->supported = rc;
    return 0;
}

static void spec_free(NormSpec *spec) {
    Py_XDECREF(spec->norm);
    Py_XDECREF(spec->action);
    Py_XDECREF(spec->object_what);
    Py_XDECREF(spec->ecs_kind);
    Py_XDECREF(spec->ecs_category);
    Py_XDECREF(spec->ecs_type);
    Py_XDECREF(spec->source_ip);
    Py_XDECREF(spec->source_ip_warning);
    for (int k = 0; k < N_SUMMARY; k++) {
        Py_XDECREF(spec->keys[k]);
        Py_XDECREF(spec->warning[k]);
    }
    for (int i = 0; i < spec->ncopy; i++) {
        Py_XDECREF(spec->copy[i].key);
        Py_XDECREF(spec->copy[i].target);
    }
    PyMem_Free(spec);
}

/* The spec of norm (read on first use); NULL: declined (an error is set when one occurred). */
static NormSpec *norm_spec(PyObject *norm) {
    size_t slot = ((uintptr_t)norm >> 4) & (NORM_TABLE_SIZE - 1);
    for (; g_norm_table[slot] != NULL; slot = (slot + 1) & (NORM_TABLE_SIZE - 1))
        if (g_norm_table[slot]->norm == norm)
            return g_norm_table[slot]->supported ? g_norm_table[slot] : NULL;
    if (g_norm_count >= NORM_MAX)
        return NULL;
    NormSpec *spec = PyMem_Calloc(1, sizeof(NormSpec));
    if (spec == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_INCREF(norm);
    spec->norm = norm;
    if (spec_read(spec, norm) < 0) {
        spec_free(spec);
        return NULL;
    }
    g_norm_table[slot] = spec;
    g_norm_count++;
    return spec->supported ? spec : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The plan: read only.                                                                        */

typedef struct {
    PyObject *how;    /* borrowed: event.how from exe / comm, NULL: left alone */
    NormSpec *spec;   /* NULL: "no normalization found for event" */
    PyObject *chosen; /* borrowed: the PATH dict of _set_file_object, NULL: no file object */
    int has_obj;      /* chosen has a key starting with obj_ */
} NormPlan;

/* d.get(key) as a borrowed reference; NULL without an error when absent. */
static inline PyObject *dict_get(PyObject *dict, PyObject *key) {
    return PyDict_GetItemWithError(dict, key);
}

static int str_starts_obj(PyObject *key) {
    if (PyUnicode_GET_LENGTH(key) < 4)
        return 0;
    if (PyUnicode_IS_ASCII(key))
        return memcmp(PyUnicode_1BYTE_DATA(key), "obj_", 4) == 0;
    return PyUnicode_READ_CHAR(key, 0) == 'o' && PyUnicode_READ_CHAR(key, 1) == 'b' &&
           PyUnicode_READ_CHAR(key, 2) == 'j' && PyUnicode_READ_CHAR(key, 3) == '_';
}

/* _set_file_object's choice of PATH record, and the checks that make the writes safe. */
static int plan_file(PyObject *paths, const NormSpec *spec, NormPlan *plan) {
    static PyObject **const values[] = {&n_name, &n_rdev, &n_inode, &n_mode, &n_ouid, &n_ogid};
    Py_ssize_t n = PyList_GET_SIZE(paths);
    Py_ssize_t start = n > spec->path_index ? spec->path_index : 0;
    PyObject *chosen = NULL;
    for (Py_ssize_t i = start; i < n; i++) {
        PyObject *candidate = PyList_GET_ITEM(paths, i);
        if (!PyDict_CheckExact(candidate))
            return DECLINE;
        if (chosen == NULL)
            chosen = candidate; /* paths[start] */
        PyObject *nametype = dict_get(candidate, n_nametype);
        if (nametype == NULL && PyErr_Occurred())
            return FAILED;
        if (nametype != NULL && !PyUnicode_CheckExact(nametype))
            return DECLINE;
        if (nametype == NULL || !(str_is(nametype, "PARENT") || str_is(nametype, "UNKNOWN"))) {
            chosen = candidate;
            break;
        }
    }
    for (size_t k = 0; k < sizeof(values) / sizeof(values[0]); k++) {
        PyObject *value = dict_get(chosen, *values[k]);
        if (value == NULL && PyErr_Occurred())
            return FAILED;
        if (value != NULL && !PyUnicode_CheckExact(value))
            return DECLINE;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(chosen, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return DECLINE; /* "\x00".join(chosen) raises */
        plan->has_obj |= str_starts_obj(key);
    }
    plan->chosen = chosen;
    return OK;
}

static int all_values_str(PyObject *dict) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value))
        if (!PyUnicode_CheckExact(value))
            return 0;
    return 1;
}

/* ecs_copy: every value it can read is a str (EcsEntity.set calls str methods), the entities
 * are not made yet, and every target is an ECS slot (Coalesced.entity raises otherwise). */
static int plan_copies(PyObject *event, const NormSpec *spec) {
    static const int read[] = {CN_ACTOR_PRIMARY, CN_ACTOR_SECONDARY, CN_OBJECT_PRIMARY, CN_OBJECT_SECONDARY};
    if (CSLOT(event, CN_ECS_ENTITIES) != Py_None || !all_values_str(CSLOT(event, CN_DATA)) ||
        !all_values_str(CSLOT(event, CN_USER_IDS)))
        return DECLINE;
    for (int k = 0; k < 4; k++)
        if (!PyUnicode_CheckExact(CSLOT(event, read[k])))
            return DECLINE;
    PyObject *slots = dict_get(PyModule_GetDict(g_coalesced_mod), n_ecs_slots);
    if (slots == NULL || !exact_str_tuple(slots))
        return PyErr_Occurred() ? FAILED : DECLINE;
    for (int i = 0; i < spec->ncopy; i++) {
        int found = PySequence_Contains(slots, spec->copy[i].target);
        if (found <= 0)
            return found < 0 ? FAILED : DECLINE;
    }
    return OK;
}

/* Whether exe (an exact str) starts with one of summarize._INTERPRETER_PREFIXES (then the
 * summary's how is comm): *interpreter; OK, DECLINE (no tuple of str there) or FAILED. */
static int interpreter_exe(PyObject *module, PyObject *exe, int *interpreter) {
    *interpreter = 0;
    PyObject *prefixes = dict_get(module, n_prefixes);
    if (prefixes == NULL || !exact_str_tuple(prefixes))
        return PyErr_Occurred() ? FAILED : DECLINE;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes) && !*interpreter; i++) {
        Py_ssize_t match = PyUnicode_Tailmatch(exe, PyTuple_GET_ITEM(prefixes, i), 0, PY_SSIZE_T_MAX, -1);
        if (match < 0)
            return FAILED;
        *interpreter = match > 0;
    }
    return OK;
}

/* _choose_normalization for record type "syscall" and a syscall name (an exact str): *norm,
 * borrowed, the table's entry or the fallback (None: no Normalization); OK, DECLINE (no
 * table dict, no fallback: Python raises) or FAILED. */
static int syscall_normalization(PyObject *module, PyObject *syscall, PyObject **norm) {
    PyObject *table = dict_get(module, n_table);
    if (table == NULL || !PyDict_CheckExact(table))
        return PyErr_Occurred() ? FAILED : DECLINE;
    *norm = dict_get(table, syscall);
    if (*norm == NULL && !PyErr_Occurred())
        *norm = dict_get(module, n_fallback);
    if (*norm == NULL)
        return PyErr_Occurred() ? FAILED : DECLINE;
    return OK;
}

static int normalize_plan(PyObject *event, NormPlan *plan) {
    memset(plan, 0, sizeof(*plan));
    if (Py_TYPE(event) != g_coalesced)
        return DECLINE;
    for (int k = 0; k < CN_COUNT; k++)
        if (CSLOT(event, k) == NULL)
            return DECLINE;
    PyObject *data = CSLOT(event, CN_DATA);
    if (!str_is(CSLOT(event, CN_RECORD_TYPE), "syscall") || !PyDict_CheckExact(data) ||
        !PyDict_CheckExact(CSLOT(event, CN_USER_IDS)) || !PyList_CheckExact(CSLOT(event, CN_PATHS)) ||
        !PyList_CheckExact(CSLOT(event, CN_WARNINGS)))
        return DECLINE;
    PyObject *module = PyModule_GetDict(g_summarize);
    /* exe = data.get("exe", data.get("comm")); interpreters: how = comm */
    PyObject *exe = dict_get(data, n_exe);
    PyObject *comm = exe || !PyErr_Occurred() ? dict_get(data, n_comm) : NULL;
    if (PyErr_Occurred())
        return FAILED;
    plan->how = exe = exe != NULL ? exe : comm;
    if (exe != NULL) {
        if (!PyUnicode_CheckExact(exe))
            return DECLINE;
        int interpreter, rc = interpreter_exe(module, exe, &interpreter);
        if (rc != OK)
            return rc;
        if (interpreter && comm != NULL)
            plan->how = comm;
    }
    PyObject *syscall = dict_get(data, n_syscall);
    PyObject *norm = NULL;
    if (syscall == NULL && PyErr_Occurred())
        return FAILED;
    if (syscall != NULL) {
        if (!PyUnicode_CheckExact(syscall))
            return DECLINE;
        int rc = syscall_normalization(module, syscall, &norm);
        if (rc != OK)
            return rc;
    }
    if (norm == NULL || norm == Py_None)
        return OK; /* norm is None */
    NormSpec *spec = plan->spec = norm_spec(norm);
    if (spec == NULL)
        return PyErr_Occurred() ? FAILED : DECLINE;
    int rc = OK;
    if (spec->object_kind == OBJECT_FILE && PyList_GET_SIZE(CSLOT(event, CN_PATHS)) > 0)
        rc = plan_file(CSLOT(event, CN_PATHS), spec, plan);
    if (rc == OK && spec->ncopy > 0)
        rc = plan_copies(event, spec);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* The writes, in apply_normalization's order. An error here leaves the event half done.      */

static void set_slot(PyObject *event, int k, PyObject *value) {
    Py_INCREF(value);
    Py_XSETREF(CSLOT(event, k), value);
}

/* int(text, 8) & 0o7777, or -1 for a ValueError (a bad mode), -2 for another error. */
static long parse_mode(PyObject *text) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_IS_ASCII(text) && n > 0 && n <= 21) {
        const Py_UCS1 *digits = PyUnicode_1BYTE_DATA(text);
        unsigned long long value = 0;
        Py_ssize_t i = 0;
        for (; i < n && digits[i] >= '0' && digits[i] <= '7'; i++)
            value = value << 3 | (unsigned long long)(digits[i] - '0');
        if (i == n)
            return (long)(value & 07777);
    }
    /* Signs, underscores, 0o, spaces, other digits: Python's own int(text, 8). */
    PyObject *number = PyLong_FromUnicodeObject(text, 8);
    if (number == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return -2;
        PyErr_Clear();
        return -1;
    }
    PyObject *mask = PyLong_FromLong(07777);
    PyObject *masked = mask ? PyNumber_And(number, mask) : NULL;
    Py_DECREF(number);
    Py_XDECREF(mask);
    long mode = masked ? PyLong_AsLong(masked) : -1;
    Py_XDECREF(masked);
    return PyErr_Occurred() ? -2 : mode;
}

static PyObject *mode_text(long mode) {
    PyObject **entry = &g_mode_text[mode & 07777];
    if (*entry == NULL) {
        char text[8];
        snprintf(text, sizeof(text), "%04lo", mode & 07777);
        *entry = PyUnicode_FromString(text);
    }
    Py_XINCREF(*entry);
    return *entry;
}

/* info[key] = chosen[from] when present and not empty. */
static int copy_nonempty(PyObject *info, PyObject *key, PyObject *chosen, PyObject *from) {
    PyObject *value = dict_get(chosen, from);
    if (value == NULL || PyUnicode_GET_LENGTH(value) == 0)
        return PyErr_Occurred() ? -1 : 0;
    return PyDict_SetItem(info, key, value);
}

static int apply_file(PyObject *event, const NormPlan *plan) {
    PyObject *chosen = plan->chosen;
    PyObject *info = PyDict_New();
    if (info == NULL)
        return FAILED;
    Py_XSETREF(CSLOT(event, CN_FILE), info); /* the slot owns it */
    PyObject *name = dict_get(chosen, n_name);
    if (name != NULL) {
        set_slot(event, CN_OBJECT_PRIMARY, name);
        if (PyUnicode_GET_LENGTH(name) > 0 && PyDict_SetItem(info, n_path, name) < 0)
            return FAILED;
    }
    if (PyErr_Occurred() || copy_nonempty(info, n_device, chosen, n_rdev) < 0 ||
        copy_nonempty(info, n_inode, chosen, n_inode) < 0)
        return FAILED;
    PyObject *text = dict_get(chosen, n_mode);
    if (text != NULL) {
        long mode = parse_mode(text);
        if (mode == -2)
            return FAILED;
        if (mode == -1) {
            PyObject *warning = PyUnicode_FromFormat(
                "failed to set file object: failed to parse file mode: %U", text);
            int rc = warning ? PyList_Append(CSLOT(event, CN_WARNINGS), warning) : -1;
            Py_XDECREF(warning);
            return rc < 0 ? FAILED : OK;
        }
        PyObject *shown = mode_text(mode);
        int rc = shown ? PyDict_SetItem(info, n_mode, shown) : -1;
        Py_XDECREF(shown);
        if (rc < 0)
            return FAILED;
        /* go-libaudit's goldens always say "file" (see summarize.py) */
        set_slot(event, CN_OBJECT_TYPE, n_file);
    }
    if (PyErr_Occurred() || copy_nonempty(info, n_uid, chosen, n_ouid) < 0 ||
        copy_nonempty(info, n_gid, chosen, n_ogid) < 0)
        return FAILED;
    if (!plan->has_obj)
        return OK;
    PyObject *selinux = PyDict_New();
    if (selinux == NULL)
        return FAILED;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    int rc = 0;
    while (rc == 0 && PyDict_Next(chosen, &pos, &key, &value)) {
        if (!str_starts_obj(key))
            continue;
        PyObject *part = PyUnicode_Substring(key, 4, PyUnicode_GET_LENGTH(key));
        rc = part ? PyDict_SetItem(selinux, part, value) : -1;
        Py_XDECREF(part);
    }
    if (rc == 0 && PyDict_GET_SIZE(selinux) > 0)
        rc = PyDict_SetItem(info, n_selinux, selinux);
    Py_DECREF(selinux);
    return rc < 0 ? FAILED : OK;
}

static int apply_socket(PyObject *event) {
    PyObject *data = CSLOT(event, CN_DATA);
    PyObject *primary = dict_get(data, n_socket_addr);
    if (primary == NULL && !PyErr_Occurred())
        primary = dict_get(data, n_socket_path);
    if (primary != NULL && primary != Py_None)
        set_slot(event, CN_OBJECT_PRIMARY, primary);
    PyObject *port = PyErr_Occurred() ? NULL : dict_get(data, n_socket_port);
    if (port != NULL)
        set_slot(event, CN_OBJECT_SECONDARY, port);
    return PyErr_Occurred() ? FAILED : OK;
}

/* _first_present: the first key's value in data, else user_ids (borrowed), NULL: none. */
static PyObject *first_present(PyObject *keys, PyObject *data, PyObject *ids) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
        PyObject *key = PyTuple_GET_ITEM(keys, i);
        PyObject *value = dict_get(data, key);
        if (value == NULL || value == Py_None)
            value = PyErr_Occurred() ? NULL : dict_get(ids, key);
        if (PyErr_Occurred())
            return NULL;
        if (value != NULL && value != Py_None)
            return value;
    }
    return NULL;
}

static int apply_summary(PyObject *event, const NormSpec *spec) {
    static const int slots[N_SUMMARY] = {CN_ACTOR_PRIMARY, CN_ACTOR_SECONDARY, CN_OBJECT_PRIMARY,
                                         CN_OBJECT_SECONDARY, CN_HOW};
    PyObject *data = CSLOT(event, CN_DATA), *ids = CSLOT(event, CN_USER_IDS);
    PyObject *warnings = CSLOT(event, CN_WARNINGS);
    for (int k = 0; k < N_SUMMARY; k++) {
        if (PyTuple_GET_SIZE(spec->keys[k]) == 0)
            continue;
        PyObject *value = first_present(spec->keys[k], data, ids);
        if (value != NULL)
            set_slot(event, slots[k], value);
        else if (PyErr_Occurred() || PyList_Append(warnings, spec->warning[k]) < 0)
            return FAILED;
    }
    if (CSLOT(event, CN_SOURCE) != Py_None || PyTuple_GET_SIZE(spec->source_ip) == 0)
        return OK;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(spec->source_ip); i++) {
        PyObject *key = PyTuple_GET_ITEM(spec->source_ip, i);
        PyObject *ip = dict_get(data, key);
        if (ip == NULL) {
            if (PyErr_Occurred())
                return FAILED;
            continue;
        }
        Py_INCREF(ip);
        PyObject *kwargs = PyDict_DelItem(data, key) == 0 ? PyDict_New() : NULL;
        PyObject *address = NULL;
        if (kwargs != NULL && PyDict_SetItem(kwargs, n_ip, ip) == 0)
            address = PyObject_VectorcallDict(g_address_type, NULL, 0, kwargs);
        Py_DECREF(ip);
        Py_XDECREF(kwargs);
        if (address == NULL)
            return FAILED;
        Py_XSETREF(CSLOT(event, CN_SOURCE), address);
        set_slot(event, CN_DIRECTION, n_ingress);
        return OK;
    }
    return PyList_Append(warnings, spec->source_ip_warning) < 0 ? FAILED : OK;
}

/* EcsEntity.set(value) */
static int entity_set(PyObject *entity, PyObject *value) {
    if (str_is(value, "") || PyUnicode_Compare(value, g_unset_value) == 0 || str_is(value, "4294967295") ||
        str_is(value, "-1"))
        return PyObject_SetAttr(entity, n_id, g_unset_value) < 0 ||
                       PyObject_SetAttr(entity, n_entity_name, s_empty) < 0
                   ? FAILED
                   : OK;
    int digits = PyUnicode_IS_ASCII(value);
    const Py_UCS1 *text = PyUnicode_1BYTE_DATA(value);
    for (Py_ssize_t i = 0; digits && i < PyUnicode_GET_LENGTH(value); i++)
        digits = text[i] >= '0' && text[i] <= '9';
    return PyObject_SetAttr(entity, digits ? n_id : n_entity_name, value) < 0 ? FAILED : OK;
}

static int apply_copies(PyObject *event, const NormSpec *spec) {
    static const int named[4] = {CN_ACTOR_PRIMARY, CN_ACTOR_SECONDARY, CN_OBJECT_PRIMARY, CN_OBJECT_SECONDARY};
    for (int i = 0; i < spec->ncopy; i++) {
        const EcsCopy *copy = &spec->copy[i];
        PyObject *value;
        if (copy->source <= SRC_OBJECT_SECONDARY) {
            value = CSLOT(event, named[copy->source]);
        } else {
            value = dict_get(CSLOT(event, copy->source == SRC_DATA ? CN_DATA : CN_USER_IDS), copy->key);
            if (value == NULL && PyErr_Occurred())
                return FAILED;
            value = value != NULL ? value : s_empty;
        }
        Py_INCREF(value); /* held across the calls below */
        PyObject *entities = CSLOT(event, CN_ECS_ENTITIES);
        if (entities == Py_None) {
            entities = PyDict_New();
            if (entities == NULL) {
                Py_DECREF(value);
                return FAILED;
            }
            Py_XSETREF(CSLOT(event, CN_ECS_ENTITIES), entities);
        }
        PyObject *entity = dict_get(entities, copy->target);
        Py_XINCREF(entity);
        if (entity == NULL && !PyErr_Occurred()) {
            entity = PyObject_CallNoArgs(g_ecs_entity_type);
            if (entity != NULL && PyDict_SetItem(entities, copy->target, entity) < 0)
                Py_CLEAR(entity);
        }
        int rc = entity != NULL ? entity_set(entity, value) : FAILED;
        Py_XDECREF(entity);
        Py_DECREF(value);
        if (rc != OK)
            return FAILED;
    }
    return OK;
}

static int normalize_apply(PyObject *event, const NormPlan *plan) {
    if (plan->how != NULL)
        set_slot(event, CN_HOW, plan->how);
    const NormSpec *spec = plan->spec;
    if (spec == NULL)
        return PyList_Append(CSLOT(event, CN_WARNINGS), n_no_norm) < 0 ? FAILED : OK;
    set_slot(event, CN_ECS_KIND, spec->ecs_kind);
    set_slot(event, CN_ECS_CATEGORY, spec->ecs_category);
    set_slot(event, CN_ECS_TYPE, spec->ecs_type);
    set_slot(event, CN_ACTION, spec->action);
    set_slot(event, CN_OBJECT_TYPE, spec->object_what);
    int rc = OK;
    if (plan->chosen != NULL)
        rc = apply_file(event, plan);
    else if (spec->object_kind == OBJECT_SOCKET)
        rc = apply_socket(event);
    if (rc == OK)
        rc = apply_summary(event, spec);
    if (rc == OK && spec->ncopy > 0)
        rc = apply_copies(event, spec);
    return rc;
}

/* apply_normalization(event) in C: OK, DECLINE (event untouched), FAILED (error set). */
static int normalize_event(PyObject *event) {
    NormPlan plan;
    int rc = normalize_plan(event, &plan);
    if (rc == FAILED) {
        PyErr_Clear(); /* reading only: let the Python function meet it */
        rc = DECLINE;
    }
    if (rc == DECLINE) {
        g_norm_declined++;
        return DECLINE;
    }
    g_norm_handled++;
    return normalize_apply(event, &plan);
}

#endif
