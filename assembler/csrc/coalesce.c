/*
 * assembler.native_coalesce: assembler/coalesce.py's coalesce() in C, for the common kernel event.
 *
 * Reference (the Python modules stay THE reference; this must equal them or decline):
 * assembler/coalesce.py (coalesce, _new_event, _compound, _add_execve), assembler/interpret.py
 * (_interpret on a clean plain body), assembler/fields.py (PLAIN_BODY, DROPPED_VALUES),
 * assembler/syscall_tail.py (whose result equals whole-record interpret(), which is what this
 * computes), assembler/coalesced.py and auditstream/escape.py (escape()).
 * coalesce(records) returns a Coalesced equal to the Python one in every attribute (dict key
 * order included), or None: "not handled here", the caller then runs the Python function.
 *
 * Handled: a SYSCALL record first, then PATH, CWD, PROCTITLE and EXECVE records, and a trailing
 * EOE (a lone SYSCALL too). SYSCALL/PATH/CWD/PROCTITLE bodies must be plain (fields.py
 * PLAIN_BODY: single-space separated key=value, values bare or double-quoted without quotes,
 * spaces or '=') and clean (printable ASCII other than '%'); EXECVE bodies must be single-space
 * separated argc/aN/aN_len/aN[i] tokens of printable ASCII. The summary and ECS step
 * (assembler.summarize.apply_normalization, table-driven) runs at the same point as in coalesce():
 * in C (coalesce_normalize.h) for the record type "syscall" and the Normalization shapes it knows,
 * reading the Python tables; anything else calls the Python function on the untouched event.
 * Name tables (arch, syscall, errno) are the Python dicts of assembler.tables, looked up at run
 * time.
 *
 * Declined (None): any other record type (SOCKADDR, SECCOMP, AVC, user-space records…), a first
 * record that is not SYSCALL, several SYSCALL records, an EOE before the end, no records besides
 * EOE (Python raises), bodies that are not plain or not clean (msg=, escapes needed, non-ASCII),
 * duplicate keys, a body holding "result", subj_* keys next to subj (obj_* next to a PATH's obj),
 * more than MAX_TOKENS fields, anything that would add a warning (a key collision in the data
 * merge, a missing or bad EXECVE argc or argument), odd EXECVE tokens, and an event whose
 * apply_normalization raises.
 *
 * Layout: this file (module setup, record interpretation, the event) includes
 * coalesce_text.h (strings, escape(), hex), coalesce_execve.h (EXECVE arguments) and
 * coalesce_normalize.h (apply_normalization).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#define PYCLASS_MODULE "native_coalesce"
#include "pyclass.h"
#include <stdint.h>
#include <string.h>

#define SYSCALL_TYPE 1300
#define PATH_TYPE 1302
#define CWD_TYPE 1307
#define EXECVE_TYPE 1309
#define EOE_TYPE 1320
#define PROCTITLE_TYPE 1327

/* Bounds: hostile input must stay cheap. Larger events are declined. */
#define MAX_TOKENS 80
#define MAX_FIELDS (MAX_TOKENS + 16) /* room for subj_/obj_ parts, result, restored exact text */
#define MAX_RECORDS 2048
#define KEY_WORDS 4 /* 256 bits of key signatures per record (find_key) */
#define MAX_EXECVE_RECORDS 256

/* Result of a step: handled, declined (return None), or a Python error is set. */
#define OK 1
#define DECLINE 0
#define FAILED (-1)

/* ------------------------------------------------------------------------------------------ */
/* Python objects looked up once (on first call, so importing this module imports nothing).  */

static int g_ready;
static PyObject *g_apply_normalization; /* assembler.summarize.apply_normalization */
static PyObject *g_arch_names;          /* assembler.tables.ARCH_NAMES: int -> str */
static PyObject *g_errno_names;         /* assembler.tables.ERRNO_NAMES: int -> str */
static PyObject *g_syscall_names;       /* assembler.tables.SYSCALL_NAMES: arch -> int -> str */
static PyObject *g_category;            /* event_category(SYSCALL): a SYSCALL lead's category */
static PyObject *g_record_type;         /* _lower_type_name(SYSCALL) */
static PyTypeObject *g_coalesced;       /* assembler.coalesced.Coalesced */
static PyObject *s_type, *s_body, *s_sec, *s_msec, *s_serial, *s_node;
static PyObject *s_unset, *s_success, *s_fail, *s_empty;

/* Coalesced's slots: offset, and the default value or factory of each dataclass field. */
typedef struct {
    Py_ssize_t offset;
    PyObject *default_value; /* borrowed from the dataclass field (kept alive by it) */
    PyObject *factory;
} SlotInfo;

enum {
    F_SEC, F_MSEC, F_SERIAL, F_NODE, F_CATEGORY, F_RECORD_TYPE, F_RESULT, F_SESSION, F_TAGS,
    F_DATA, F_USER_IDS, F_USER_SELINUX, F_ACTOR_PRIMARY, F_ACTOR_SECONDARY, F_PID, F_PPID,
    F_TITLE, F_NAME, F_EXE, F_CWD, F_ARGS, F_PATHS, N_NAMED
};
static const char *const NAMED_FIELDS[N_NAMED] = {
    "sec", "msec", "serial", "node", "category", "record_type", "result", "session", "tags",
    "data", "user_ids", "user_selinux", "actor_primary", "actor_secondary", "pid", "ppid",
    "title", "name", "exe", "cwd", "args", "paths",
};
static SlotInfo *g_slots;
static Py_ssize_t g_nslots;
static Py_ssize_t g_named[N_NAMED]; /* index into g_slots */
static int *g_named_of_slot;        /* per slot: its named field, or -1 */
static PyObject *g_fields_keep;     /* the dataclass Field objects (own the defaults) */

static int find_slot(PyObject *name, PyObject *field, Py_ssize_t index, PyObject *missing) {
    PyObject *descr = PyDict_GetItemWithError(g_coalesced->tp_dict, name);
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "Coalesced.%U is not a slot", name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX || (member->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "Coalesced.%U is not a writable object slot", name);
        return -1;
    }
    PyObject *dflt = PyObject_GetAttrString(field, "default");
    PyObject *factory = dflt ? PyObject_GetAttrString(field, "default_factory") : NULL;
    if (factory == NULL) {
        Py_XDECREF(dflt);
        return -1;
    }
    g_slots[index].offset = member->offset;
    g_slots[index].default_value = dflt == missing ? NULL : dflt;
    g_slots[index].factory = factory == missing ? NULL : factory;
    Py_DECREF(dflt); /* the Field object (kept in g_fields_keep) holds them */
    Py_DECREF(factory);
    return 0;
}

static int load_slots(void) {
    PyObject *fields_fn = import_attr("dataclasses", "fields");
    PyObject *missing = fields_fn ? import_attr("dataclasses", "MISSING") : NULL;
    PyObject *fields = missing ? PyObject_CallOneArg(fields_fn, (PyObject *)g_coalesced) : NULL;
    Py_XDECREF(fields_fn);
    if (fields == NULL) {
        Py_XDECREF(missing);
        return -1;
    }
    g_fields_keep = PySequence_Tuple(fields);
    Py_DECREF(fields);
    if (g_fields_keep == NULL) {
        Py_DECREF(missing);
        return -1;
    }
    g_nslots = PyTuple_GET_SIZE(g_fields_keep);
    g_slots = PyMem_Calloc((size_t)g_nslots + 1, sizeof(SlotInfo));
    if (g_slots == NULL) {
        Py_DECREF(missing);
        PyErr_NoMemory();
        return -1;
    }
    for (int k = 0; k < N_NAMED; k++)
        g_named[k] = -1;
    for (Py_ssize_t i = 0; i < g_nslots; i++) {
        PyObject *field = PyTuple_GET_ITEM(g_fields_keep, i);
        PyObject *name = PyObject_GetAttrString(field, "name");
        if (name == NULL || find_slot(name, field, i, missing) < 0) {
            Py_XDECREF(name);
            Py_DECREF(missing);
            return -1;
        }
        for (int k = 0; k < N_NAMED; k++)
            if (PyUnicode_CompareWithASCIIString(name, NAMED_FIELDS[k]) == 0)
                g_named[k] = i;
        int required = g_slots[i].default_value == NULL && g_slots[i].factory == NULL;
        Py_DECREF(name);
        if (required && i > F_RECORD_TYPE) {
            Py_DECREF(missing);
            PyErr_SetString(PyExc_TypeError, "Coalesced has a required field this module does not fill");
            return -1;
        }
    }
    Py_DECREF(missing);
    g_named_of_slot = PyMem_Malloc(((size_t)g_nslots + 1) * sizeof(int));
    if (g_named_of_slot == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < g_nslots; i++)
        g_named_of_slot[i] = -1;
    for (int k = 0; k < N_NAMED; k++) {
        if (g_named[k] < 0) {
            PyErr_Format(PyExc_TypeError, "Coalesced has no field %s", NAMED_FIELDS[k]);
            return -1;
        }
        g_named_of_slot[g_named[k]] = k;
    }
    return 0;
}

static int intern_names(void) {
    s_type = PyUnicode_InternFromString("type");
    s_body = PyUnicode_InternFromString("body");
    s_sec = PyUnicode_InternFromString("sec");
    s_msec = PyUnicode_InternFromString("msec");
    s_serial = PyUnicode_InternFromString("serial");
    s_node = PyUnicode_InternFromString("node");
    s_unset = PyUnicode_InternFromString("unset");
    s_success = PyUnicode_InternFromString("success");
    s_fail = PyUnicode_InternFromString("fail");
    s_empty = PyUnicode_InternFromString("");
    return (s_type && s_body && s_sec && s_msec && s_serial && s_node && s_unset && s_success &&
            s_fail && s_empty) ? 0 : -1;
}

static int load_python_objects(void) {
    if (intern_names() < 0)
        return -1;
    g_apply_normalization = import_attr("assembler.summarize", "apply_normalization");
    g_arch_names = g_apply_normalization ? import_attr("assembler.tables", "ARCH_NAMES") : NULL;
    g_errno_names = g_arch_names ? import_attr("assembler.tables", "ERRNO_NAMES") : NULL;
    g_syscall_names = g_errno_names ? import_attr("assembler.tables", "SYSCALL_NAMES") : NULL;
    PyObject *coalesced = g_syscall_names ? import_attr("assembler.coalesced", "Coalesced") : NULL;
    if (coalesced == NULL)
        return -1;
    if (!PyType_Check(coalesced) || !PyDict_Check(g_arch_names) || !PyDict_Check(g_errno_names) ||
        !PyDict_Check(g_syscall_names)) {
        Py_DECREF(coalesced);
        PyErr_SetString(PyExc_TypeError, "unexpected assembler tables or Coalesced");
        return -1;
    }
    g_coalesced = (PyTypeObject *)coalesced;
    PyObject *category_fn = import_attr("assembler.coalesce", "event_category");
    PyObject *type_name_fn = category_fn ? import_attr("assembler.coalesce", "_lower_type_name") : NULL;
    PyObject *number = PyLong_FromLong(SYSCALL_TYPE);
    if (type_name_fn != NULL && number != NULL) {
        g_category = PyObject_CallOneArg(category_fn, number);
        g_record_type = g_category ? PyObject_CallOneArg(type_name_fn, number) : NULL;
    }
    Py_XDECREF(category_fn);
    Py_XDECREF(type_name_fn);
    Py_XDECREF(number);
    if (g_record_type == NULL)
        return -1;
    return load_slots();
}

/* assembler.parse.Record's slots, read by offset: a generic getattr (type lookup, descriptor
 * call) for each record's type and body and the lead's key and node, ~1 % of the live
 * assembler. Anything that is not exactly a Record (a subclass, a test's stand-in) is read
 * with getattr, as before. */
enum { R_TYPE, R_BODY, R_SEC, R_MSEC, R_SERIAL, R_NODE, R_COUNT };
static const char *const g_record_fields[R_COUNT] = {"type", "body", "sec",
                                                     "msec", "serial", "node"};
static PyObject **const g_record_names[R_COUNT] = {&s_type, &s_body, &s_sec,
                                                   &s_msec, &s_serial, &s_node};
static PyTypeObject *g_record_class;
static Py_ssize_t g_record_offsets[R_COUNT];

static int load_record_slots(void) {
    PyTypeObject *cls = import_type("assembler.parse", "Record");
    if (cls == NULL || slot_offsets(cls, g_record_fields, g_record_offsets, R_COUNT) < 0) {
        Py_XDECREF(cls);
        return -1;
    }
    g_record_class = cls;
    return 0;
}

/* rec.<field> (a new reference); NULL with AttributeError when unset, as getattr. */
static PyObject *record_attr(PyObject *rec, int field) {
    PyObject *value = Py_IS_TYPE(rec, g_record_class) ? slot(rec, g_record_offsets[field]) : NULL;
    return value != NULL ? Py_NewRef(value) : PyObject_GetAttr(rec, *g_record_names[field]);
}

#include "coalesce_normalize.h"

static int ensure_ready(void) {
    if (g_ready)
        return 0;
    if (load_python_objects() < 0 || load_record_slots() < 0 || normalize_init() < 0)
        return -1;
    g_ready = 1;
    return 0;
}

#include "coalesce_text.h"

/* ------------------------------------------------------------------------------------------ */
/* One record's fields, as interpret.py's _interpret makes them from a clean plain body.       */

typedef struct {
    const char *key;
    Py_ssize_t key_len;
    const char *raw; /* the value's text, quotes removed */
    Py_ssize_t raw_len;
    PyObject *value; /* owned replacement text, else NULL: the raw text */
    uint32_t signature; /* key_signature(): most keys differ here, before any memcmp */
    unsigned char quoted;
    unsigned char alive; /* 0: dropped value or popped by a step */
} Field;

typedef struct {
    Field fields[MAX_FIELDS];
    int count;
    int tokens;           /* fields[0 .. tokens) are the body's tokens, in order */
    int has_subj_prefix;  /* a token key starts with subj_ */
    int has_obj_prefix;   /* a token key starts with obj_ */
    uint64_t key_bits[KEY_WORDS]; /* key_bit() of every field appended: most absent keys miss here */
    PyObject *rule_keys;  /* owned list */
} Interp;

static void interp_clear(Interp *it) {
    for (int i = 0; i < it->count; i++)
        Py_CLEAR(it->fields[i].value);
    Py_CLEAR(it->rule_keys);
    it->count = 0;
    memset(it->key_bits, 0, sizeof it->key_bits);
}

#define KEY_IS(f, lit) ((f)->key_len == (Py_ssize_t)sizeof(lit) - 1 && memcmp((f)->key, lit, sizeof(lit) - 1) == 0)
#define RAW_IS(f, lit) ((f)->raw_len == (Py_ssize_t)sizeof(lit) - 1 && memcmp((f)->raw, lit, sizeof(lit) - 1) == 0)

static inline uint32_t key_signature(const char *key, Py_ssize_t len) {
    return len == 0 ? 0 : (uint32_t)(len & 0xff) << 24 | (uint32_t)(unsigned char)key[0] << 16 |
                              (uint32_t)(unsigned char)key[len / 2] << 8 | (unsigned char)key[len - 1];
}

/* One of 256 bits per signature: a field's key is looked for (~30 times a record, for
 * duplicates and by the steps) only when its bit is set, instead of over every field.
 * (64 bits were ~40 % set by a SYSCALL record's ~30 keys: a scan for most lookups.) */
static inline int key_word(uint32_t signature) {
    return (int)((signature * 2654435761u) >> 30);
}
static inline uint64_t key_bit(uint32_t signature) {
    return (uint64_t)1 << (((signature * 2654435761u) >> 24) & 63);
}

static int find_key(const Interp *it, const char *key, Py_ssize_t len, int alive_only) {
    uint32_t signature = key_signature(key, len);
    if (!(it->key_bits[key_word(signature)] & key_bit(signature)))
        return -1;
    for (int i = 0; i < it->count; i++) {
        const Field *f = &it->fields[i];
        if (f->signature == signature && (f->alive || !alive_only) && f->key_len == len &&
            memcmp(f->key, key, (size_t)len) == 0)
            return i;
    }
    return -1;
}
#define FIND(it, lit) find_key(it, lit, (Py_ssize_t)sizeof(lit) - 1, 1)

static Field *append_field(Interp *it, const char *key, Py_ssize_t key_len, const char *raw,
                           Py_ssize_t raw_len) {
    if (it->count >= MAX_FIELDS)
        return NULL;
    Field *f = &it->fields[it->count++];
    *f = (Field){key, key_len, raw, raw_len, NULL, key_signature(key, key_len), 0, 1};
    it->key_bits[key_word(f->signature)] |= key_bit(f->signature);
    return f;
}

/* Character classes of PLAIN_BODY, one table lookup per character of a body. */
enum { KEY_CHAR = 1, VALUE_CHAR = 2 };
static unsigned char g_char_class[256];

static void init_char_classes(void) {
    for (int c = 0; c < 256; c++) {
        int key = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
        int value = c != '"' && c != '\'' && c != ' ' && c != '=';
        g_char_class[c] = (unsigned char)((key ? KEY_CHAR : 0) | (value ? VALUE_CHAR : 0));
    }
}

static int is_key_char(unsigned char c) { return g_char_class[c] & KEY_CHAR; }

/* A value character of PLAIN_BODY in a clean body: not a quote, space or '='. */
static int is_plain_value_char(unsigned char c) { return g_char_class[c] & VALUE_CHAR; }

/* fields.py's DROPPED_VALUES: the field is as good as absent. */
static int is_dropped(const Field *f) {
    return f->raw_len == 0 || RAW_IS(f, "?") || RAW_IS(f, "?,") || RAW_IS(f, "(null)");
}

static int is_clean(const char *body, Py_ssize_t len) {
    return all_pass_escape((const unsigned char *)body, len);
}

/* Split a clean body as PLAIN_BODY; DECLINE when it is not plain, has duplicate keys or msg. */
static int split_plain(const char *body, Py_ssize_t len, Interp *it) {
    Py_ssize_t pos = 0;
    if (len == 0 || !is_clean(body, len))
        return DECLINE;
    while (1) {
        Py_ssize_t key_start = pos;
        while (pos < len && is_key_char((unsigned char)body[pos]))
            pos++;
        if (pos == key_start || pos >= len || body[pos] != '=')
            return DECLINE;
        Py_ssize_t key_len = pos - key_start;
        if (++pos >= len)
            return DECLINE; /* key= at the end: no value */
        int quoted = body[pos] == '"';
        Py_ssize_t start = pos + quoted, end = start;
        while (end < len && is_plain_value_char((unsigned char)body[end]))
            end++;
        if (quoted) {
            if (end >= len || body[end] != '"')
                return DECLINE;
            pos = end + 1;
        } else {
            if (end == start)
                return DECLINE;
            pos = end;
        }
        if (it->tokens >= MAX_TOKENS || find_key(it, body + key_start, key_len, 0) >= 0)
            return DECLINE; /* too many fields, or a duplicate key (the regex path) */
        Field *f = append_field(it, body + key_start, key_len, body + start, end - start);
        f->quoted = (unsigned char)quoted;
        f->alive = !is_dropped(f);
        it->tokens++;
        if (KEY_IS(f, "msg") || KEY_IS(f, "result"))
            return DECLINE;
        it->has_subj_prefix |= key_len > 5 && memcmp(f->key, "subj_", 5) == 0;
        it->has_obj_prefix |= key_len > 4 && memcmp(f->key, "obj_", 4) == 0;
        if (pos == len)
            return OK;
        if (body[pos] != ' ' || pos + 1 >= len)
            return DECLINE;
        pos++;
    }
}

static int set_value(Field *f, PyObject *value) {
    if (value == NULL)
        return FAILED;
    Py_XSETREF(f->value, value);
    return OK;
}

/* auid, old-auid, ses of 4294967295 or -1 -> "unset". */
static void unset_ids(Interp *it) {
    static const char *const keys[] = {"auid", "old-auid", "ses"};
    for (int k = 0; k < 3; k++) {
        int i = find_key(it, keys[k], (Py_ssize_t)strlen(keys[k]), 1);
        if (i >= 0 && (RAW_IS(&it->fields[i], "4294967295") || RAW_IS(&it->fields[i], "-1"))) {
            Py_INCREF(s_unset);
            set_value(&it->fields[i], s_unset);
        }
    }
}

static const char *const SUBJ_PARTS[] = {"subj_user", "subj_role", "subj_domain", "subj_level", "subj_category"};
static const char *const OBJ_PARTS[] = {"obj_user", "obj_role", "obj_domain", "obj_level", "obj_category"};

/* subj=user:role:domain:level:category -> subj_user… (split(":", 4)), appended. */
static int split_context(Interp *it, int index, const char *const parts[5]) {
    Field *context = &it->fields[index];
    if (context->value != NULL)
        return DECLINE;
    context->alive = 0;
    const char *text = context->raw, *end = context->raw + context->raw_len;
    for (int part = 0; part < 5; part++) {
        const char *stop = end;
        if (part < 4) {
            const char *colon = memchr(text, ':', (size_t)(end - text));
            if (colon != NULL)
                stop = colon;
        }
        if (append_field(it, parts[part], (Py_ssize_t)strlen(parts[part]), text, stop - text) == NULL)
            return DECLINE;
        if (stop == end)
            break;
        text = stop + 1;
    }
    return OK;
}

static int lower_starts(const Field *f, const char *lit) {
    Py_ssize_t n = (Py_ssize_t)strlen(lit);
    if (f->raw_len < n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = f->raw[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lit[i])
            return 0;
    }
    return 1;
}

/* success (else res) -> result = success|fail, appended. */
static int result_field(Interp *it) {
    int index = FIND(it, "success");
    if (index < 0)
        index = FIND(it, "res");
    if (index < 0)
        return OK;
    Field *f = &it->fields[index];
    f->alive = 0;
    int ok = (f->raw_len == 3 && lower_starts(f, "yes")) || RAW_IS(f, "1") || lower_starts(f, "suc");
    Field *result = append_field(it, "result", 6, "", 0);
    if (result == NULL)
        return DECLINE;
    PyObject *text = ok ? s_success : s_fail;
    Py_INCREF(text);
    return set_value(result, text);
}

/* Python's int() of a decimal string raises past sys.get_int_max_str_digits() digits (640 is
 * the lowest limit it accepts), which makes coalesce() warn: such a number is declined. */
#define PYTHON_INT_DIGITS_FLOOR 640

/* interpret.py's _go_atoi ([+-]?[0-9]+, int64): OK and *number when it is one of the small
 * numbers the tables hold; 0 when not a number or too large for any table; DECLINE when
 * Python's int() would raise. */
enum { NOT_SMALL = 2 };
static int small_int(const char *text, Py_ssize_t len, long long *number) {
    int negative = 0;
    Py_ssize_t i = 0;
    if (len > 0 && (text[0] == '+' || text[0] == '-')) {
        negative = text[0] == '-';
        i = 1;
    }
    if (i == len || digit_run(text + i, len - i) != len - i)
        return NOT_SMALL;
    if (len - i >= PYTHON_INT_DIGITS_FLOOR)
        return DECLINE;
    long long value = 0;
    int digits = 0;
    for (; i < len; i++) {
        if (digits > 0 || text[i] != '0')
            digits++;
        if (digits > 18)
            return NOT_SMALL; /* in int64 or not, no table holds such a number */
        value = value * 10 + (text[i] - '0');
    }
    *number = negative ? -value : value;
    return OK;
}

/* A table lookup by int: new reference, NULL with no error when absent. */
static PyObject *lookup_int(PyObject *table, long long number) {
    PyObject *key = PyLong_FromLongLong(number);
    if (key == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(table, key);
    Py_DECREF(key);
    Py_XINCREF(found);
    return found;
}

/* A negative exit is named after its errno (-13 -> EACCES). */
static int exit_name(Interp *it) {
    int index = FIND(it, "exit");
    if (index < 0)
        return OK;
    Field *f = &it->fields[index];
    long long code;
    if (f->raw_len == 0 || f->raw[0] != '-')
        return OK;
    int parsed = small_int(f->raw, f->raw_len, &code);
    if (parsed != OK || code >= 0)
        return parsed == DECLINE ? DECLINE : OK;
    PyObject *name = lookup_int(g_errno_names, -code);
    if (name == NULL)
        return PyErr_Occurred() ? FAILED : OK;
    if (name == Py_None) {
        Py_DECREF(name);
        return OK;
    }
    return set_value(f, name);
}

/* The rule keys: key=… popped; unquoted upper-case hex holds several keys split on 0x01. */
static int rule_keys(Interp *it) {
    it->rule_keys = PyList_New(0);
    if (it->rule_keys == NULL)
        return FAILED;
    int index = FIND(it, "key");
    if (index < 0)
        return OK;
    Field *f = &it->fields[index];
    f->alive = 0;
    if (f->quoted || !is_upper_hex(f->raw, f->raw_len)) {
        PyObject *text = ascii_str(f->raw, f->raw_len);
        int rc = text ? PyList_Append(it->rule_keys, text) : -1;
        Py_XDECREF(text);
        return rc < 0 ? FAILED : OK;
    }
    Py_ssize_t size = f->raw_len / 2;
    unsigned char *bytes = PyMem_Malloc((size_t)size + 1);
    if (bytes == NULL) {
        PyErr_NoMemory();
        return FAILED;
    }
    decode_upper_hex(f->raw, f->raw_len, bytes);
    Py_ssize_t start = 0;
    int rc = OK;
    for (Py_ssize_t i = 0; i <= size && rc == OK; i++) {
        if (i < size && bytes[i] != 0x01)
            continue;
        PyObject *part = escape_bytes(bytes + start, i - start);
        if (part == NULL || PyList_Append(it->rule_keys, part) < 0)
            rc = FAILED;
        Py_XDECREF(part);
        start = i + 1;
    }
    PyMem_Free(bytes);
    return rc;
}

/* An unquoted upper-case hex value decoded (NUL -> space) and escaped, in place. */
static int decode_hex_field(Field *f) {
    if (f->quoted || f->value != NULL || !is_upper_hex(f->raw, f->raw_len))
        return OK;
    return set_value(f, hex_text(f->raw, f->raw_len, NUL_TO_SPACE));
}

/* interpret.py's arch_name(): hex int64 -> uint32 -> ARCH_NAMES or unknown[…]. New reference. */
static PyObject *arch_name(const Field *f) {
    const char *text = f->raw;
    Py_ssize_t len = f->raw_len, i = 0;
    int negative = 0;
    if (len > 0 && (text[0] == '+' || text[0] == '-')) {
        negative = text[0] == '-';
        i = 1;
    }
    uint64_t value = 0;
    int digits = 0, is_hex = i < len;
    for (; i < len && is_hex; i++) {
        char c = text[i];
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (digit < 0)
            is_hex = 0;
        else if (digits > 0 || digit != 0)
            digits++;
        value = (value << 4) | (uint64_t)(digit & 15);
    }
    /* Not hex, or outside int64 (Go's ParseInt rejects it): the token unchanged. */
    if (!is_hex || digits > 16 || value > (negative ? (uint64_t)1 << 63 : (uint64_t)INT64_MAX))
        return ascii_str(f->raw, f->raw_len);
    uint32_t arch = (uint32_t)((negative ? (uint64_t)0 - value : value) & 0xffffffffu);
    PyObject *name = lookup_int(g_arch_names, (long long)arch);
    if (name == NULL && PyErr_Occurred())
        return NULL;
    int truthy = name != NULL ? PyObject_IsTrue(name) : 0;
    if (truthy < 0) {
        Py_DECREF(name);
        return NULL;
    }
    if (truthy)
        return name;
    Py_XDECREF(name);
    return PyUnicode_FromFormat("unknown[%x]", (unsigned int)arch);
}

/* Recent arch tokens and their names: a host logs one or two arches. */
#define ARCH_CACHE_SIZE 4
#define ARCH_TOKEN_MAX 24
static struct {
    char token[ARCH_TOKEN_MAX];
    Py_ssize_t len;
    PyObject *name;
} g_arch_cache[ARCH_CACHE_SIZE];
static int g_arch_next;

static PyObject *cached_arch_name(const Field *f) {
    for (int k = 0; k < ARCH_CACHE_SIZE; k++)
        if (g_arch_cache[k].name != NULL && g_arch_cache[k].len == f->raw_len &&
            memcmp(g_arch_cache[k].token, f->raw, (size_t)f->raw_len) == 0) {
            Py_INCREF(g_arch_cache[k].name);
            return g_arch_cache[k].name;
        }
    PyObject *name = arch_name(f);
    if (name == NULL || f->raw_len > ARCH_TOKEN_MAX)
        return name;
    int k = g_arch_next++ % ARCH_CACHE_SIZE;
    memcpy(g_arch_cache[k].token, f->raw, (size_t)f->raw_len);
    g_arch_cache[k].len = f->raw_len;
    Py_INCREF(name);
    Py_XSETREF(g_arch_cache[k].name, name);
    return name;
}

/* arch -> its name; syscall -> its name under that arch (SYSCALL_NAMES[arch][number]). */
static int syscall_names(Interp *it) {
    int arch_index = FIND(it, "arch");
    if (arch_index < 0)
        return OK;
    if (it->fields[arch_index].value != NULL)
        return DECLINE;
    PyObject *arch = cached_arch_name(&it->fields[arch_index]);
    if (set_value(&it->fields[arch_index], arch) != OK)
        return FAILED;
    int call_index = FIND(it, "syscall");
    long long number;
    if (call_index < 0)
        return OK;
    if (it->fields[call_index].value != NULL)
        return DECLINE;
    int parsed = small_int(it->fields[call_index].raw, it->fields[call_index].raw_len, &number);
    if (parsed != OK)
        return parsed == DECLINE ? DECLINE : OK;
    PyObject *per_arch = PyDict_GetItemWithError(g_syscall_names, arch);
    if (per_arch == NULL)
        return PyErr_Occurred() ? FAILED : OK;
    if (!PyDict_Check(per_arch))
        return DECLINE;
    PyObject *name = lookup_int(per_arch, number);
    if (name == NULL)
        return PyErr_Occurred() ? FAILED : OK;
    if (name == Py_None) {
        Py_DECREF(name);
        return OK;
    }
    return set_value(&it->fields[call_index], name);
}

/* The exact-text pass for user-chosen text (coalesce.py's _UNTRUSTED_FIELDS). */
static int exact_text(Interp *it, const char *key) {
    Py_ssize_t key_len = (Py_ssize_t)strlen(key);
    int index = find_key(it, key, key_len, 1);
    if (index >= 0) {
        Field *f = &it->fields[index];
        if (f->value != NULL)
            return DECLINE; /* not reached: no step rewrites these fields */
        return decode_hex_field(f);
    }
    /* A dropped value the kernel quoted (a file named "?") is kept, appended. */
    index = find_key(it, key, key_len, 0);
    if (index < 0 || !it->fields[index].quoted || it->fields[index].raw_len == 0)
        return OK;
    const Field *token = &it->fields[index];
    return append_field(it, token->key, token->key_len, token->raw, token->raw_len) ? OK : DECLINE;
}

static int interpret_steps(Interp *it, long record_type) {
    int rc = OK, index;
    unset_ids(it);
    if ((index = FIND(it, "subj")) >= 0)
        rc = it->has_subj_prefix ? DECLINE : split_context(it, index, SUBJ_PARTS);
    if (rc == OK)
        rc = result_field(it);
    if (rc == OK)
        rc = exit_name(it);
    if (rc == OK)
        rc = rule_keys(it);
    if (rc == OK && record_type != CWD_TYPE && (index = FIND(it, "cwd")) >= 0)
        rc = decode_hex_field(&it->fields[index]);
    if (rc == OK && record_type == SYSCALL_TYPE)
        rc = syscall_names(it);
    if (rc == OK && record_type == PATH_TYPE && (index = FIND(it, "obj")) >= 0)
        rc = it->has_obj_prefix ? DECLINE : split_context(it, index, OBJ_PARTS);
    if (rc != OK)
        return rc;
    switch (record_type) {
    case SYSCALL_TYPE:
        rc = exact_text(it, "comm");
        return rc == OK ? exact_text(it, "exe") : rc;
    case CWD_TYPE:
        return exact_text(it, "cwd");
    case PATH_TYPE:
        return exact_text(it, "name");
    case PROCTITLE_TYPE:
        return exact_text(it, "proctitle");
    default:
        return DECLINE;
    }
}

/* interpret(rec, exact) of one record into it: OK, DECLINE or FAILED. */
static int interpret_record(long record_type, PyObject *body, Interp *it) {
    it->count = it->tokens = it->has_subj_prefix = it->has_obj_prefix = 0;
    memset(it->key_bits, 0, sizeof it->key_bits);
    it->rule_keys = NULL;
    int rc = split_plain(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), it);
    return rc == OK ? interpret_steps(it, record_type) : rc;
}

static PyObject *field_value(const Field *f) {
    if (f->value != NULL) {
        Py_INCREF(f->value);
        return f->value;
    }
    return value_str(f->raw, f->raw_len);
}

/* Put a field in dict (new key or in place). */
static int dict_put(PyObject *dict, const Field *f) {
    PyObject *key = key_str(f->key, f->key_len);
    PyObject *value = key ? field_value(f) : NULL;
    int rc = value ? PyDict_SetItem(dict, key, value) : -1;
    Py_XDECREF(key);
    Py_XDECREF(value);
    return rc;
}

/* A new dict with room for n keys. Built empty, an event's data dict grew 8 -> 16 -> 32 ->
 * 64 slots, rehashing each time (~3k instructions per event with the PATH dicts).
 * _PyDict_NewPresized is CPython's own, public in 3.11 and 3.12 (later: an empty dict). */
static PyObject *dict_for(Py_ssize_t n) {
#if PY_VERSION_HEX < 0x030D0000
    return _PyDict_NewPresized(n);
#else
    (void)n;
    return PyDict_New();
#endif
}

/* The record's data as a new dict, in field order. */
static PyObject *fields_dict(const Interp *it) {
    PyObject *dict = dict_for(it->count);
    for (int i = 0; dict != NULL && i < it->count; i++)
        if (it->fields[i].alive && dict_put(dict, &it->fields[i]) < 0)
            Py_CLEAR(dict);
    return dict;
}

/* Merge a record's fields into data: DECLINE on a collision (Python warns there). */
static int merge_fields(PyObject *data, const Interp *it) {
    for (int i = 0; i < it->count; i++) {
        const Field *f = &it->fields[i];
        if (!f->alive)
            continue;
        PyObject *key = key_str(f->key, f->key_len);
        if (key == NULL)
            return FAILED;
        int present = PyDict_Contains(data, key);
        Py_DECREF(key);
        if (present != 0)
            return present < 0 ? FAILED : DECLINE;
    }
    for (int i = 0; i < it->count; i++)
        if (it->fields[i].alive && dict_put(data, &it->fields[i]) < 0)
            return FAILED;
    return OK;
}

#include "coalesce_execve.h"

/* ------------------------------------------------------------------------------------------ */
/* The event.                                                                                  */

typedef struct {
    PyObject *slot[N_NAMED]; /* owned values of the named Coalesced fields, NULL: default */
} EventParts;

static void parts_clear(EventParts *parts) {
    for (int k = 0; k < N_NAMED; k++)
        Py_CLEAR(parts->slot[k]);
}

static int ends_with(const Field *f, const char *suffix) {
    Py_ssize_t n = (Py_ssize_t)strlen(suffix);
    return f->key_len >= n && memcmp(f->key + f->key_len - n, suffix, (size_t)n) == 0;
}

static int dict_put_key(PyObject *dict, const char *key, Py_ssize_t key_len, const Field *f) {
    PyObject *name = key_str(key, key_len);
    PyObject *value = name ? field_value(f) : NULL;
    int rc = value ? PyDict_SetItem(dict, name, value) : -1;
    Py_XDECREF(name);
    Py_XDECREF(value);
    return rc;
}

/* _new_event's split of the SYSCALL record: result, session, actor, ids, SELinux, data. */
static int syscall_parts(const Interp *it, int compound, EventParts *parts) {
    /* room for the SYSCALL's fields and those CWD, PROCTITLE and EXECVE (argc) add */
    PyObject *data = parts->slot[F_DATA] = dict_for(it->count + 8);
    PyObject *ids = parts->slot[F_USER_IDS] = PyDict_New();
    PyObject *selinux = parts->slot[F_USER_SELINUX] = PyDict_New();
    if (data == NULL || ids == NULL || selinux == NULL)
        return FAILED;
    for (int i = 0; i < it->count; i++) {
        const Field *f = &it->fields[i];
        int rc = 0, slot = -1;
        if (!f->alive)
            continue;
        if (KEY_IS(f, "result"))
            slot = F_RESULT;
        else if (KEY_IS(f, "ses"))
            slot = F_SESSION;
        if (slot >= 0) {
            Py_XSETREF(parts->slot[slot], field_value(f));
            if (parts->slot[slot] == NULL)
                return FAILED;
            continue;
        }
        if (KEY_IS(f, "auid") || KEY_IS(f, "uid")) {
            slot = KEY_IS(f, "auid") ? F_ACTOR_PRIMARY : F_ACTOR_SECONDARY;
            Py_XSETREF(parts->slot[slot], field_value(f));
            if (parts->slot[slot] == NULL)
                return FAILED;
        }
        if (ends_with(f, "uid") || ends_with(f, "gid"))
            rc = dict_put(ids, f);
        else if (f->key_len >= 5 && memcmp(f->key, "subj_", 5) == 0)
            rc = dict_put_key(selinux, f->key + 5, f->key_len - 5, f);
        else if (!(compound && KEY_IS(f, "items"))) /* _compound pops items */
            rc = dict_put(data, f);
        if (rc < 0)
            return FAILED;
    }
    if (parts->slot[F_SESSION] == NULL) {
        Py_INCREF(s_empty);
        parts->slot[F_SESSION] = s_empty;
    }
    parts->slot[F_TAGS] = it->rule_keys;
    Py_INCREF(it->rule_keys);
    return OK;
}

/* A Coalesced with the named parts (stolen) and every other field at its default. */
static PyObject *new_coalesced(EventParts *parts) {
    PyObject *event = g_coalesced->tp_alloc(g_coalesced, 0);
    if (event == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < g_nslots; i++) {
        PyObject *value = NULL;
        int named = g_named_of_slot[i];
        if (named >= 0) {
            value = parts->slot[named]; /* stolen */
            parts->slot[named] = NULL;
        }
        if (value == NULL && g_slots[i].default_value != NULL) {
            value = g_slots[i].default_value;
            Py_INCREF(value);
        } else if (value == NULL && g_slots[i].factory == (PyObject *)&PyList_Type) {
            value = PyList_New(0);
        } else if (value == NULL && g_slots[i].factory == (PyObject *)&PyDict_Type) {
            value = PyDict_New();
        } else if (value == NULL && g_slots[i].factory != NULL) {
            value = PyObject_CallNoArgs(g_slots[i].factory);
        }
        if (value == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "Coalesced field without a value");
            Py_DECREF(event);
            return NULL;
        }
        PyObject **address = (PyObject **)((char *)event + g_slots[i].offset);
        Py_XSETREF(*address, value);
    }
    return event;
}

static PyObject **slot_address(PyObject *event, int named) {
    return (PyObject **)((char *)event + g_slots[g_named[named]].offset);
}

/* coalesce()'s last step: lift the acting process's fields out of data. */
static int lift_process(PyObject *event) {
    static const char *const keys[] = {"pid", "ppid", "proctitle", "comm", "exe", "cwd"};
    static const int slots[] = {F_PID, F_PPID, F_TITLE, F_NAME, F_EXE, F_CWD};
    PyObject *data = *slot_address(event, F_DATA);
    if (data == NULL || !PyDict_CheckExact(data))
        return DECLINE;
    for (int k = 0; k < 6; k++) {
        PyObject *key = key_str(keys[k], (Py_ssize_t)strlen(keys[k]));
        PyObject *value = key ? PyDict_GetItemWithError(data, key) : NULL;
        if (value == NULL && PyErr_Occurred()) {
            Py_XDECREF(key);
            return FAILED;
        }
        int found = value != NULL;
        value = found ? value : s_empty;
        Py_INCREF(value);
        if (found && PyDict_DelItem(data, key) < 0) {
            Py_DECREF(value);
            Py_DECREF(key);
            return FAILED;
        }
        Py_DECREF(key);
        Py_XSETREF(*slot_address(event, slots[k]), value);
    }
    return OK;
}

typedef struct {
    PyObject *records; /* snapshot of the list */
    Py_ssize_t count;  /* records without the trailing EOE, read so far */
    long *types;
    PyObject **bodies; /* owned */
} EventInput;

static void input_clear(EventInput *in) {
    for (Py_ssize_t i = 0; i < in->count; i++)
        Py_CLEAR(in->bodies[i]);
    Py_CLEAR(in->records);
    PyMem_Free(in->types);
    PyMem_Free(in->bodies);
    in->types = NULL;
    in->bodies = NULL;
}

/* A record's type as a C long; DECLINE when it is not a plain int. */
static int record_type_of(PyObject *rec, long *type) {
    PyObject *value = record_attr(rec, R_TYPE);
    if (value == NULL) {
        PyErr_Clear();
        return DECLINE;
    }
    int overflow = 0;
    *type = PyLong_CheckExact(value) ? PyLong_AsLongAndOverflow(value, &overflow) : -1;
    Py_DECREF(value);
    if (PyErr_Occurred())
        PyErr_Clear();
    return overflow ? DECLINE : OK;
}

/* The records' types and bodies; DECLINE for any event outside this module's scope. */
static int read_input(PyObject *records, EventInput *in) {
    in->count = 0;
    in->records = PyList_GetSlice(records, 0, PyList_GET_SIZE(records));
    if (in->records == NULL)
        return FAILED;
    Py_ssize_t n = PyList_GET_SIZE(in->records);
    if (n == 0 || n > MAX_RECORDS)
        return DECLINE;
    long last;
    if (record_type_of(PyList_GET_ITEM(in->records, n - 1), &last) != OK)
        return DECLINE;
    if (last == EOE_TYPE)
        n--; /* a trailing EOE is ignored; nothing else means Python raises */
    in->types = PyMem_Malloc(((size_t)n + 1) * sizeof(long));
    in->bodies = PyMem_Malloc(((size_t)n + 1) * sizeof(PyObject *));
    if (in->types == NULL || in->bodies == NULL) {
        PyErr_NoMemory();
        return FAILED;
    }
    Py_ssize_t execve = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long type;
        if (record_type_of(PyList_GET_ITEM(in->records, i), &type) != OK)
            return DECLINE;
        int allowed = i == 0 ? type == SYSCALL_TYPE
                             : type == PATH_TYPE || type == CWD_TYPE || type == PROCTITLE_TYPE ||
                                   type == EXECVE_TYPE;
        execve += type == EXECVE_TYPE;
        if (!allowed || execve > MAX_EXECVE_RECORDS)
            return DECLINE;
        PyObject *body = record_attr(PyList_GET_ITEM(in->records, i), R_BODY);
        if (body == NULL) {
            PyErr_Clear();
            return DECLINE;
        }
        in->types[i] = type;
        in->bodies[i] = body;
        in->count = i + 1;
        if (!PyBytes_CheckExact(body))
            return DECLINE;
    }
    return n > 0 ? OK : DECLINE;
}

/* The lead record's frame: sec, msec, serial, node, category, record type. */
static int frame_parts(PyObject *lead, EventParts *parts) {
    for (int k = 0; k < 4; k++) {
        parts->slot[F_SEC + k] = record_attr(lead, R_SEC + k);
        if (parts->slot[F_SEC + k] == NULL) {
            PyErr_Clear();
            return DECLINE;
        }
    }
    Py_INCREF(g_category);
    parts->slot[F_CATEGORY] = g_category;
    Py_INCREF(g_record_type);
    parts->slot[F_RECORD_TYPE] = g_record_type;
    return OK;
}

/* _compound's loop over the records after the SYSCALL: paths, merged data, EXECVE bodies. */
static int fold_records(EventInput *in, EventParts *parts, Interp *it) {
    PyObject *paths = parts->slot[F_PATHS] = PyList_New(0);
    PyObject *execve[MAX_EXECVE_RECORDS];
    Py_ssize_t nexecve = 0;
    if (paths == NULL)
        return FAILED;
    for (Py_ssize_t i = 1; i < in->count; i++) {
        if (in->types[i] == EXECVE_TYPE) {
            execve[nexecve++] = in->bodies[i];
            continue;
        }
        int rc = interpret_record(in->types[i], in->bodies[i], it);
        if (rc == OK && in->types[i] == PATH_TYPE) {
            PyObject *fields = fields_dict(it);
            rc = fields != NULL && PyList_Append(paths, fields) == 0 ? OK : FAILED;
            Py_XDECREF(fields);
        } else if (rc == OK) {
            rc = merge_fields(parts->slot[F_DATA], it);
        }
        interp_clear(it);
        if (rc != OK)
            return rc;
    }
    if (nexecve == 0)
        return OK;
    PyObject *argc = NULL;
    int rc = execve_arguments(execve, nexecve, &argc, &parts->slot[F_ARGS]);
    if (rc == OK) {
        PyObject *key = key_str("argc", 4);
        rc = key && PyDict_SetItem(parts->slot[F_DATA], key, argc) == 0 ? OK : FAILED;
        Py_XDECREF(key);
    }
    Py_XDECREF(argc);
    return rc;
}

/* Build the event (before normalization); result OK/DECLINE/FAILED, *out the new Coalesced. */
static int build_event(EventInput *in, Interp *it, PyObject **out) {
    EventParts parts;
    memset(&parts, 0, sizeof(parts));
    int rc = frame_parts(PyList_GET_ITEM(in->records, 0), &parts);
    if (rc == OK)
        rc = interpret_record(SYSCALL_TYPE, in->bodies[0], it);
    if (rc == OK)
        rc = syscall_parts(it, in->count > 1, &parts);
    interp_clear(it);
    if (rc == OK && in->count > 1)
        rc = fold_records(in, &parts, it);
    if (rc == OK) {
        *out = new_coalesced(&parts);
        rc = *out ? OK : FAILED;
    }
    parts_clear(&parts);
    return rc;
}

static PyObject *coalesce(PyObject *module, PyObject *records) {
    if (ensure_ready() < 0)
        return NULL;
    if (!PyList_CheckExact(records))
        Py_RETURN_NONE; /* a list subclass may index differently: Python's code then */
    EventInput in = {NULL, 0, NULL, NULL};
    Interp it; /* fields are filled as they are appended */
    it.count = 0;
    memset(it.key_bits, 0, sizeof it.key_bits);
    it.rule_keys = NULL;
    PyObject *event = NULL;
    int rc = read_input(records, &in);
    if (rc == OK)
        rc = build_event(&in, &it, &event);
    input_clear(&in);
    if (rc == OK) {
        /* Table-driven summary and ECS fields, at the same point: in C, else the Python
         * reference on the untouched event. */
        rc = normalize_event(event);
        if (rc == DECLINE) {
            PyObject *done = PyObject_CallOneArg(g_apply_normalization, event);
            if (done == NULL)
                PyErr_Clear(); /* Python's coalesce() raises the same: let it */
            rc = done == NULL ? DECLINE : OK;
            Py_XDECREF(done);
        }
    }
    if (rc == OK)
        rc = lift_process(event);
    if (rc == OK)
        return event;
    Py_XDECREF(event);
    if (rc == FAILED)
        return NULL;
    Py_RETURN_NONE;
}

#include "coalesce_fused.h"

static PyObject *normalize_counts(PyObject *module, PyObject *unused) {
    return Py_BuildValue("(KK)", g_norm_handled, g_norm_declined);
}

static PyMethodDef methods[] = {
    {"coalesce", coalesce, METH_O,
     "coalesce(records) -> Coalesced | None: assembler.coalesce.coalesce() for the common kernel "
     "event, or None (not handled here: run the Python function)."},
    {"_normalize_counts", normalize_counts, METH_NOARGS,
     "_normalize_counts() -> (handled, declined): events whose apply_normalization ran in C, and "
     "those left to the Python function, since the module was loaded (for the tests)."},
    {"_fused_counts", fused_counts, METH_NOARGS,
     "_fused_counts() -> (taken, declined): events read as fused events (coalesce_fused.h), and "
     "those declined, since the module was loaded (for the tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "native_coalesce",
    "assembler.coalesce.coalesce() in C for common kernel events (None: use the Python code).", -1,
    methods,
};

PyMODINIT_FUNC PyInit_native_coalesce(void) {
    init_char_classes();
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    g_fused_api.coalesce = coalesce;
    PyObject *capsule = PyCapsule_New(&g_fused_api, FUSED_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(mod, "_fused_api", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
