/*
 * Part of assembler/csrc/coalesce.c (included once, last): the fused event of
 * assembler/csrc/fused_event.h, read from the records without the Coalesced object.
 *
 * Reference: this file's own coalesce() (build_event, normalize_event, lift_process), which
 * stays the reference for everything here. fused_read fills what those would put in the
 * Coalesced, as fields pointing into the records' bodies, and declines (0) wherever that
 * would take more than the common case: besides what coalesce() declines, a data key
 * starting with "socket_", a repeated key, an "argc" already in
 * data, a summary or ECS step that is not the plain table case (no Normalization found, an
 * ecs_copy, a socket object, source_ip keys, a file object with SELinux (obj) fields or a
 * mode that is not plain octal digits, a summary key found nowhere: each of those adds a
 * warning or an object this path does not write), more than FUSED_MAX_PATHS PATH records or
 * FUSED_MAX_RECORDS records.
 */
#ifndef AUDITSTREAM_COALESCE_FUSED_H
#define AUDITSTREAM_COALESCE_FUSED_H

#include "fused_event.h"

#define FUSED_MAX_RECORDS 24 /* besides EXECVE records */
#define FUSED_MAX_DATA (4 * MAX_FIELDS)

/* One event at a time (under the GIL; no Python code runs between read and release). */
static Interp g_fused_interps[FUSED_MAX_RECORDS];
static int g_fused_interp_count;
static EventInput g_fused_input;
static FusedField g_fused_data[FUSED_MAX_DATA], g_fused_ids[MAX_FIELDS], g_fused_selinux[MAX_FIELDS];
static uint32_t g_fused_data_sig[FUSED_MAX_DATA], g_fused_ids_sig[MAX_FIELDS];
static uint64_t g_fused_data_bits[KEY_WORDS], g_fused_ids_bits[KEY_WORDS];
static FusedField g_fused_paths[FUSED_MAX_PATHS * MAX_FIELDS];
static PyObject *g_fused_argc; /* owned while an event is out: data's argc value */
static int g_fused_busy;
static PyObject *g_fused_default[FE_COUNT]; /* the Coalesced's default of each slot (owned) */
static const char *const FUSED_SLOT_NAMES[FE_COUNT] = {
#define FUSED_SLOT_NAME(id, name) name,
    FUSED_SLOTS(FUSED_SLOT_NAME)
#undef FUSED_SLOT_NAME
};
static unsigned long long g_fused_taken, g_fused_declined;

/* The dataclass defaults of the slots (tags has a factory: it is always set here). */
static int fused_init(void) {
    static int done;
    if (done)
        return 0;
    for (int k = 0; k < FE_COUNT; k++) {
        if (g_fused_default[k] != NULL || k == FE_TAGS)
            continue;
        for (Py_ssize_t i = 0; i < g_nslots && g_fused_default[k] == NULL; i++) {
            PyObject *name = PyObject_GetAttrString(PyTuple_GET_ITEM(g_fields_keep, i), "name");
            if (name == NULL)
                return -1;
            int same = PyUnicode_CompareWithASCIIString(name, FUSED_SLOT_NAMES[k]) == 0;
            Py_DECREF(name);
            if (same && g_slots[i].default_value != NULL)
                g_fused_default[k] = Py_NewRef(g_slots[i].default_value);
        }
        if (g_fused_default[k] == NULL && k > FE_RECORD_TYPE) {
            PyErr_Format(PyExc_TypeError, "Coalesced.%s has no plain default", FUSED_SLOT_NAMES[k]);
            return -1;
        }
    }
    done = 1;
    return 0;
}

static void fused_release(FusedEvent *ev) {
    for (int k = 0; k < FE_COUNT; k++)
        Py_CLEAR(ev->slot[k]);
    for (int i = 0; i < g_fused_interp_count; i++)
        interp_clear(&g_fused_interps[i]);
    g_fused_interp_count = 0;
    Py_CLEAR(g_fused_argc);
    input_clear(&g_fused_input);
    g_fused_busy = 0;
}

/* The value as a new str. */
static PyObject *text_str(const FusedText *t) {
    return t->str != NULL ? Py_NewRef(t->str) : value_str(t->text, t->len);
}

static void text_of(const Field *f, FusedText *t) {
    t->text = f->raw;
    t->len = f->raw_len;
    t->str = f->value; /* borrowed: the Interp owns it until release */
}

/* Append f to fields (n, signatures alongside, key_bit()s of the keys in bits: a key whose bit
 * is clear is new without a search); DECLINE on a key already there or no room. */
static int append_unique(FusedField *fields, uint32_t *sigs, uint64_t *bits, int *n, int room,
                         const Field *f) {
    uint64_t *word = &bits[key_word(f->signature)], bit = key_bit(f->signature);
    for (int i = 0; (*word & bit) && i < *n; i++)
        if (sigs[i] == f->signature && fields[i].key_len == f->key_len &&
            memcmp(fields[i].key, f->key, (size_t)f->key_len) == 0)
            return DECLINE;
    *word |= bit;
    if (*n >= room)
        return DECLINE;
    FusedField *out = &fields[*n];
    out->key = f->key;
    out->key_len = f->key_len;
    text_of(f, &out->value);
    sigs[(*n)++] = f->signature;
    return OK;
}

static const FusedText *lookup(const FusedField *fields, int n, const char *key) {
    int i = fused_find(fields, n, key, (Py_ssize_t)strlen(key));
    return i < 0 ? NULL : &fields[i].value;
}

/* A str key of a Normalization table, looked up in fields; NULL: absent (or not ASCII). */
static const FusedText *lookup_str(const FusedField *fields, int n, PyObject *key) {
    if (!PyUnicode_IS_ASCII(key))
        return NULL; /* the fields' keys are ASCII */
    int i = fused_find(fields, n, (const char *)PyUnicode_1BYTE_DATA(key), PyUnicode_GET_LENGTH(key));
    return i < 0 ? NULL : &fields[i].value;
}

/* user_selinux[key without "subj_"] = value (dict_put_key): a repeated key declines. */
static int append_selinux(FusedEvent *ev, const Field *f) {
    const char *key = f->key + 5;
    Py_ssize_t len = f->key_len - 5;
    if (fused_find(g_fused_selinux, ev->n_selinux, key, len) >= 0 || ev->n_selinux >= MAX_FIELDS)
        return DECLINE;
    FusedField *out = &g_fused_selinux[ev->n_selinux++];
    out->key = key;
    out->key_len = len;
    text_of(f, &out->value);
    return OK;
}

/* syscall_parts, into slots and the data and ids arrays. */
static int fused_syscall(FusedEvent *ev, const Interp *it, int compound) {
    for (int i = 0; i < it->count; i++) {
        const Field *f = &it->fields[i];
        if (!f->alive)
            continue;
        int slot = KEY_IS(f, "result") ? FE_RESULT : KEY_IS(f, "ses") ? FE_SESSION : -1;
        if (slot >= 0) {
            Py_XSETREF(ev->slot[slot], field_value(f));
            if (ev->slot[slot] == NULL)
                return FAILED;
            continue;
        }
        if (KEY_IS(f, "auid") || KEY_IS(f, "uid")) {
            slot = KEY_IS(f, "auid") ? FE_ACTOR_PRIMARY : FE_ACTOR_SECONDARY;
            Py_XSETREF(ev->slot[slot], field_value(f));
            if (ev->slot[slot] == NULL)
                return FAILED;
        }
        int rc = OK;
        if (ends_with(f, "uid") || ends_with(f, "gid"))
            rc = append_unique(g_fused_ids, g_fused_ids_sig, g_fused_ids_bits, &ev->n_ids,
                               MAX_FIELDS, f);
        else if (f->key_len >= 5 && memcmp(f->key, "subj_", 5) == 0)
            rc = append_selinux(ev, f);
        else if (!(compound && KEY_IS(f, "items")))
            rc = append_unique(g_fused_data, g_fused_data_sig, g_fused_data_bits, &ev->n_data,
                               FUSED_MAX_DATA, f);
        if (rc != OK)
            return rc;
    }
    ev->slot[FE_TAGS] = Py_NewRef(it->rule_keys);
    return OK;
}

static Interp *next_interp(void) {
    if (g_fused_interp_count >= FUSED_MAX_RECORDS)
        return NULL;
    Interp *it = &g_fused_interps[g_fused_interp_count++];
    it->count = 0; /* interpret_record resets the rest */
    it->rule_keys = NULL;
    return it;
}

/* fold_records: PATH fields, data merged from CWD and PROCTITLE, EXECVE's argc and args. */
static int fused_fold(FusedEvent *ev, EventInput *in) {
    PyObject *execve[MAX_EXECVE_RECORDS];
    Py_ssize_t nexecve = 0;
    int npath_fields = 0;
    ev->path_fields = g_fused_paths;
    for (Py_ssize_t i = 1; i < in->count; i++) {
        if (in->types[i] == EXECVE_TYPE) {
            execve[nexecve++] = in->bodies[i];
            continue;
        }
        Interp *it = next_interp();
        if (it == NULL)
            return DECLINE;
        int rc = interpret_record(in->types[i], in->bodies[i], it);
        if (rc != OK)
            return rc;
        if (in->types[i] == PATH_TYPE) {
            if (ev->n_paths >= FUSED_MAX_PATHS)
                return DECLINE;
            uint32_t sigs[MAX_FIELDS];
            uint64_t bits[KEY_WORDS] = {0};
            int count = 0;
            for (int k = 0; k < it->count; k++)
                if (it->fields[k].alive &&
                    (rc = append_unique(g_fused_paths + npath_fields, sigs, bits, &count,
                                        MAX_FIELDS, &it->fields[k])) != OK)
                    return rc;
            ev->path_start[ev->n_paths++] = npath_fields;
            npath_fields += count;
            continue;
        }
        for (int k = 0; k < it->count; k++) /* merge_fields: a collision declines */
            if (it->fields[k].alive &&
                (rc = append_unique(g_fused_data, g_fused_data_sig, g_fused_data_bits, &ev->n_data,
                                    FUSED_MAX_DATA, &it->fields[k])) != OK)
                return rc;
    }
    ev->path_start[ev->n_paths] = npath_fields;
    if (nexecve == 0)
        return OK;
    int rc = execve_arguments(execve, nexecve, &g_fused_argc, &ev->slot[FE_ARGS]);
    if (rc != OK)
        return rc;
    if (!PyUnicode_CheckExact(g_fused_argc) || lookup(g_fused_data, ev->n_data, "argc") != NULL ||
        ev->n_data >= FUSED_MAX_DATA)
        return DECLINE; /* the dict put would replace it in place */
    FusedField *argc = &g_fused_data[ev->n_data++];
    argc->key = "argc";
    argc->key_len = 4;
    argc->value.text = NULL;
    argc->value.len = 0;
    argc->value.str = g_fused_argc;
    return OK;
}

static void fused_set(FusedEvent *ev, int k, PyObject *value) {
    Py_XSETREF(ev->slot[k], Py_NewRef(value));
}

static int fused_set_text(FusedEvent *ev, int k, const FusedText *t) {
    PyObject *value = text_str(t);
    if (value == NULL)
        return FAILED;
    Py_XSETREF(ev->slot[k], value);
    return OK;
}

/* plan_file + apply_file on the PATH fields. */
static int fused_file(FusedEvent *ev, const NormSpec *spec) {
    Py_ssize_t n = ev->n_paths, start = n > spec->path_index ? spec->path_index : 0;
    Py_ssize_t chosen = -1;
    for (Py_ssize_t i = start; i < n; i++) {
        if (chosen < 0)
            chosen = i;
        const FusedText *nametype = lookup(g_fused_paths + ev->path_start[i],
                                           ev->path_start[i + 1] - ev->path_start[i], "nametype");
        if (nametype == NULL || !(fused_text_is(nametype, "PARENT") || fused_text_is(nametype, "UNKNOWN"))) {
            chosen = i;
            break;
        }
    }
    const FusedField *fields = g_fused_paths + ev->path_start[chosen];
    int count = ev->path_start[chosen + 1] - ev->path_start[chosen];
    for (int i = 0; i < count; i++)
        if (fields[i].key_len >= 4 && memcmp(fields[i].key, "obj_", 4) == 0)
            return DECLINE; /* file.selinux */
    static const struct { int member; const char *from; } copies[] = {
        {FF_DEVICE, "rdev"}, {FF_INODE, "inode"}, {FF_UID, "ouid"}, {FF_GID, "ogid"}};
    ev->has_file = 1;
    const FusedText *name = lookup(fields, count, "name");
    if (name != NULL) {
        if (fused_set_text(ev, FE_OBJECT_PRIMARY, name) != OK)
            return FAILED;
        if (PyUnicode_GET_LENGTH(ev->slot[FE_OBJECT_PRIMARY]) > 0)
            ev->file[FF_PATH] = *name;
    }
    for (size_t k = 0; k < sizeof copies / sizeof copies[0]; k++) {
        const FusedText *value = lookup(fields, count, copies[k].from);
        if (value != NULL && (value->str ? PyUnicode_GET_LENGTH(value->str) : value->len) > 0)
            ev->file[copies[k].member] = *value;
    }
    const FusedText *mode = lookup(fields, count, "mode");
    if (mode != NULL) {
        if (mode->str != NULL || mode->len == 0 || mode->len > 21)
            return DECLINE; /* Python's int(text, 8), or a warning */
        unsigned long long value = 0;
        for (Py_ssize_t i = 0; i < mode->len; i++) {
            if (mode->text[i] < '0' || mode->text[i] > '7')
                return DECLINE;
            value = value << 3 | (unsigned long long)(mode->text[i] - '0');
        }
        PyObject *shown = mode_text((long)(value & 07777)); /* the cache keeps it */
        if (shown == NULL)
            return FAILED;
        Py_DECREF(shown);
        ev->file[FF_MODE].str = shown;
        fused_set(ev, FE_OBJECT_TYPE, n_file);
    }
    return OK;
}

/* how, the Normalization's fields, the file object and the summary (normalize_event). */
static int fused_normalize(FusedEvent *ev) {
    PyObject *module = PyModule_GetDict(g_summarize);
    const FusedText *exe = lookup(g_fused_data, ev->n_data, "exe");
    const FusedText *comm = lookup(g_fused_data, ev->n_data, "comm");
    const FusedText *how = exe != NULL ? exe : comm;
    if (how != NULL) {
        PyObject *text = text_str(how);
        if (text == NULL)
            return FAILED;
        int interpreter, rc = interpreter_exe(module, text, &interpreter);
        Py_DECREF(text);
        if (rc != OK)
            return rc;
        if (interpreter && comm != NULL)
            how = comm;
        if (fused_set_text(ev, FE_HOW, how) != OK)
            return FAILED;
    }
    const FusedText *syscall = lookup(g_fused_data, ev->n_data, "syscall");
    if (syscall == NULL)
        return DECLINE; /* no Normalization: a warning */
    PyObject *name = text_str(syscall), *norm = NULL;
    if (name == NULL)
        return FAILED;
    int found = syscall_normalization(module, name, &norm);
    Py_DECREF(name);
    if (found != OK)
        return found;
    if (norm == Py_None)
        return DECLINE; /* no Normalization: a warning */
    NormSpec *spec = norm_spec(norm);
    if (spec == NULL)
        return PyErr_Occurred() ? FAILED : DECLINE;
    if (spec->ncopy > 0 || spec->object_kind == OBJECT_SOCKET ||
        PyTuple_GET_SIZE(spec->source_ip) > 0)
        return DECLINE;
    fused_set(ev, FE_ECS_CATEGORY, spec->ecs_category);
    fused_set(ev, FE_ECS_TYPE, spec->ecs_type);
    fused_set(ev, FE_ACTION, spec->action);
    fused_set(ev, FE_OBJECT_TYPE, spec->object_what);
    int rc = OK;
    if (spec->object_kind == OBJECT_FILE && ev->n_paths > 0)
        rc = fused_file(ev, spec);
    static const int slots[N_SUMMARY] = {FE_ACTOR_PRIMARY, FE_ACTOR_SECONDARY, FE_OBJECT_PRIMARY,
                                         FE_OBJECT_SECONDARY, FE_HOW};
    for (int k = 0; rc == OK && k < N_SUMMARY; k++) {
        PyObject *keys = spec->keys[k];
        if (PyTuple_GET_SIZE(keys) == 0)
            continue;
        const FusedText *value = NULL;
        for (Py_ssize_t i = 0; value == NULL && i < PyTuple_GET_SIZE(keys); i++) {
            PyObject *key = PyTuple_GET_ITEM(keys, i);
            value = lookup_str(g_fused_data, ev->n_data, key);
            if (value == NULL)
                value = lookup_str(g_fused_ids, ev->n_ids, key);
        }
        rc = value == NULL ? DECLINE : fused_set_text(ev, slots[k], value); /* else a warning */
    }
    return rc;
}

/* lift_process: the acting process's fields out of data, into their slots. */
static int fused_lift(FusedEvent *ev) {
    static const char *const keys[] = {"pid", "ppid", "proctitle", "comm", "exe", "cwd"};
    static const int slots[] = {FE_PID, FE_PPID, FE_TITLE, FE_NAME, FE_EXE, FE_CWD};
    int lifted[FUSED_MAX_DATA];
    memset(lifted, 0, sizeof(int) * (size_t)ev->n_data);
    for (int k = 0; k < 6; k++) {
        int i = fused_find(g_fused_data, ev->n_data, keys[k], (Py_ssize_t)strlen(keys[k]));
        if (i < 0) {
            fused_set(ev, slots[k], s_empty);
            continue;
        }
        if (fused_set_text(ev, slots[k], &g_fused_data[i].value) != OK)
            return FAILED;
        lifted[i] = 1;
    }
    int kept = 0;
    for (int i = 0; i < ev->n_data; i++) {
        const FusedField *f = &g_fused_data[i];
        if (lifted[i])
            continue;
        if (f->key_len >= 7 && memcmp(f->key, "socket_", 7) == 0)
            return DECLINE; /* auditd.data.socket: the Coalesced way */
        g_fused_data[kept++] = *f;
    }
    ev->n_data = kept;
    return OK;
}

static int fused_fill(PyObject *records, FusedEvent *ev) {
    EventInput *in = &g_fused_input;
    int rc = read_input(records, in);
    if (rc != OK)
        return rc;
    PyObject *lead = PyList_GET_ITEM(in->records, 0);
    static const int frame[4] = {FE_SEC, FE_MSEC, FE_SERIAL, FE_NODE};
    for (int k = 0; k < 4; k++)
        if ((ev->slot[frame[k]] = record_attr(lead, R_SEC + k)) == NULL) {
            PyErr_Clear();
            return DECLINE;
        }
    ev->slot[FE_CATEGORY] = Py_NewRef(g_category);
    ev->slot[FE_RECORD_TYPE] = Py_NewRef(g_record_type);
    for (int k = FE_RECORD_TYPE + 1; k < FE_COUNT; k++)
        if (k != FE_TAGS)
            ev->slot[k] = Py_NewRef(g_fused_default[k]);
    ev->data = g_fused_data;
    ev->ids = g_fused_ids;
    memset(g_fused_data_bits, 0, sizeof g_fused_data_bits);
    memset(g_fused_ids_bits, 0, sizeof g_fused_ids_bits);
    ev->selinux = g_fused_selinux;
    Interp *it = next_interp();
    rc = interpret_record(SYSCALL_TYPE, in->bodies[0], it);
    if (rc == OK)
        rc = fused_syscall(ev, it, in->count > 1);
    if (rc == OK && ev->slot[FE_SESSION] == g_fused_default[FE_SESSION])
        fused_set(ev, FE_SESSION, s_empty); /* syscall_parts' default, not the dataclass's */
    if (rc == OK && in->count > 1)
        rc = fused_fold(ev, in);
    if (rc == OK)
        rc = fused_normalize(ev);
    if (rc == OK)
        rc = fused_lift(ev);
    return rc;
}

static int fused_read(PyObject *records, FusedEvent *ev) {
    memset(ev, 0, sizeof(*ev));
    if (g_fused_busy || !PyList_CheckExact(records))
        return 0;
    if (ensure_ready() < 0 || fused_init() < 0)
        return -1;
    g_fused_busy = 1;
    int rc = fused_fill(records, ev);
    if (rc == OK) {
        g_fused_taken++;
        return 1;
    }
    fused_release(ev);
    if (rc == FAILED)
        return -1;
    g_fused_declined++;
    return 0;
}

static FusedApi g_fused_api = {FUSED_API_VERSION, fused_read, fused_release, text_str, NULL};

static PyObject *fused_counts(PyObject *module, PyObject *unused) {
    return Py_BuildValue("(KK)", g_fused_taken, g_fused_declined);
}

#endif
