/* assembler.native_ecs: assembler/ecs.py's build_doc() in C.
 *
 * Reference: assembler/ecs.py (build_doc and its helpers) and auditstream/escape.py
 * (escape). The Python modules stay the reference: build_doc here returns exactly
 * the dict the Python build_doc returns (same contents, same key order, and the same
 * sharing: auditd.data, file and error.message are the Coalesced's own containers,
 * everything else is new), or None ("not handled here": the caller runs Python).
 *
 * Declined (None): a Coalesced, Record or Address whose attributes are not of their
 * annotated exact types (or are unset); an empty record list; a timestamp whose second
 * is before 1970 or after 9999 (Python adds a warning there); auditd.data holding a
 * "socket" key next to socket_* keys, or keys that are not str; user ids that are not
 * str or that collide with a non-dict (where Python would raise); a node that cannot
 * be encoded with surrogateescape; any exception from the Python helpers called here
 * (type_name, enriched_fields, _add_ecs_entities), which Python would raise as well.
 *
 * Tables are not copied: record type names come from auditstream.logline.type_name
 * (memoised per type), ENRICHED trailers are split by assembler.parse.enriched_fields
 * and the ECS entity slots are filled by assembler.ecs._add_ecs_entities.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#define PYCLASS_MODULE "native_ecs"
#include "pyclass.h"
#include "escape.h"
#include "civil_days.h"
#include "hash_hex.h"
#include <string.h>
#include <limits.h>
#include <stdint.h>

/* ---- Python objects looked up at import ------------------------------------------ */

static PyTypeObject *coalesced_type, *address_type, *record_type;
static PyObject *type_name_fn, *enriched_fields_fn, *add_ecs_entities_fn;
/* record type (int) -> "type=NAME msg=", bounded like ecs._RecordPrefixes */
static PyObject *prefix_cache;
#define PREFIX_CACHE_MAX 1024

/* Interned key and value strings. */
#define STRING_LIST(X)                                                                    \
    X(s_timestamp, "@timestamp") X(s_event, "event") X(s_auditd, "auditd")               \
    X(s_user, "user") X(s_kind, "kind") X(s_module, "module") X(s_action, "action")      \
    X(s_outcome, "outcome") X(s_sequence, "sequence") X(s_category, "category")          \
    X(s_type, "type") X(s_success, "success") X(s_failure, "failure")                    \
    X(s_unknown, "unknown") X(s_message_type, "message_type") X(s_result, "result")      \
    X(s_data, "data") X(s_session, "session") X(s_summary, "summary")                    \
    X(s_actor, "actor") X(s_primary, "primary") X(s_secondary, "secondary")              \
    X(s_object, "object") X(s_how, "how") X(s_paths, "paths") X(s_records, "records")    \
    X(s_socket, "socket") X(s_unset, "unset") X(s_id, "id") X(s_name, "name")            \
    X(s_group, "group") X(s_effective, "effective") X(s_saved, "saved")                  \
    X(s_filesystem, "filesystem") X(s_audit, "audit") X(s_selinux, "selinux")            \
    X(s_process, "process") X(s_pid, "pid") X(s_parent, "parent") X(s_title, "title")    \
    X(s_executable, "executable") X(s_working_directory, "working_directory")            \
    X(s_args, "args") X(s_args_count, "args_count") X(s_file, "file")                    \
    X(s_source, "source") X(s_destination, "destination") X(s_network, "network")        \
    X(s_direction, "direction") X(s_host, "host") X(s_tags, "tags") X(s_error, "error")  \
    X(s_ip, "ip") X(s_port, "port") X(s_path, "path") X(s_auditd_module, "auditd")      \
    X(s_message, "message") X(s_syscall, "syscall") X(s_exit, "exit") X(s_a0, "a0")

#define DECLARE_STRING(var, text) static PyObject *var;
STRING_LIST(DECLARE_STRING)
#undef DECLARE_STRING

/* ---- slot offsets of the dataclasses (slots=True: member descriptors) ------------- */

/* Coalesced attributes read here and the exact type each must have. */
#define COALESCED_FIELDS(X)                                                               \
    X(C_SEC, "sec", 'i') X(C_MSEC, "msec", 'i') X(C_SERIAL, "serial", 'i')               \
    X(C_NODE, "node", 's') X(C_CATEGORY, "category", 's')                                \
    X(C_RECORD_TYPE, "record_type", 's') X(C_RESULT, "result", 's')                      \
    X(C_SESSION, "session", 's') X(C_TAGS, "tags", 'l') X(C_DATA, "data", 'd')           \
    X(C_USER_IDS, "user_ids", 'd') X(C_USER_SELINUX, "user_selinux", 'd')                \
    X(C_ACTOR_PRIMARY, "actor_primary", 's') X(C_ACTOR_SECONDARY, "actor_secondary", 's') \
    X(C_ACTION, "action", 's') X(C_OBJECT_TYPE, "object_type", 's')                      \
    X(C_OBJECT_PRIMARY, "object_primary", 's')                                           \
    X(C_OBJECT_SECONDARY, "object_secondary", 's') X(C_HOW, "how", 's')                  \
    X(C_PID, "pid", 's') X(C_PPID, "ppid", 's') X(C_TITLE, "title", 's')                 \
    X(C_NAME, "name", 's') X(C_EXE, "exe", 's') X(C_CWD, "cwd", 's')                     \
    X(C_ARGS, "args", 't') X(C_FILE, "file", 'D') X(C_SOURCE, "source", 'A')             \
    X(C_DESTINATION, "destination", 'A') X(C_DIRECTION, "direction", 's')                \
    X(C_PATHS, "paths", 'l') X(C_ECS_CATEGORY, "ecs_category", 't')                      \
    X(C_ECS_TYPE, "ecs_type", 't') X(C_ECS_OUTCOME, "ecs_outcome", 's')                  \
    X(C_ECS_ENTITIES, "ecs_entities", 'D') X(C_WARNINGS, "warnings", 'l')

#define FIELD_ENUM(id, name, kind) id,
enum { COALESCED_FIELDS(FIELD_ENUM) C_COUNT };
#undef FIELD_ENUM
#define FIELD_NAME(id, name, kind) name,
static const char *const coalesced_names[C_COUNT] = {COALESCED_FIELDS(FIELD_NAME)};
#undef FIELD_NAME
#define FIELD_KIND(id, name, kind) kind,
static const char coalesced_kinds[C_COUNT] = {COALESCED_FIELDS(FIELD_KIND)};
#undef FIELD_KIND
static Py_ssize_t coalesced_offsets[C_COUNT];

enum { R_TYPE, R_DATA, R_ENRICHED, R_NODE, R_SEC, R_MSEC, R_SERIAL, R_COUNT };
static const char *const record_names[R_COUNT] = {"type", "data", "enriched", "node",
                                                  "sec", "msec", "serial"};
static Py_ssize_t record_offsets[R_COUNT];

enum { A_IP, A_PORT, A_PATH, A_COUNT };
static const char *const address_names[A_COUNT] = {"ip", "port", "path"};
static Py_ssize_t address_offsets[A_COUNT];

/* ---- small helpers ---------------------------------------------------------------- */

static inline int nonempty_str(PyObject *text) { return PyUnicode_GET_LENGTH(text) > 0; }

static inline int str_equals_ascii(PyObject *text, const char *ascii)
{
    if (!PyUnicode_IS_ASCII(text))
        return 0;
    size_t len = strlen(ascii);
    return (size_t)PyUnicode_GET_LENGTH(text) == len &&
           memcmp(PyUnicode_DATA(text), ascii, len) == 0;
}

/* An exception from a Python helper: Python's build_doc would raise it too, so decline
 * (the caller's Python run raises); only memory errors and non-Exceptions propagate. */
static void decline_helper_error(void)
{
    if (PyErr_ExceptionMatches(PyExc_Exception) &&
        !PyErr_ExceptionMatches(PyExc_MemoryError))
        PyErr_Clear();
}

/* ---- escape (auditstream/escape.py): escape.h ------------------------------------ */

static PyObject *escape_bytes(PyObject *raw)
{
    return escape_with_prefix(NULL, (const unsigned char *)PyBytes_AS_STRING(raw),
                              PyBytes_GET_SIZE(raw));
}

static PyObject *py_escape(PyObject *module, PyObject *raw)
{
    if (!PyBytes_Check(raw)) {
        PyErr_SetString(PyExc_TypeError, "escape() takes bytes");
        return NULL;
    }
    return escape_bytes(raw);
}

/* ---- reading the inputs --------------------------------------------------------------- */

typedef struct {
    PyObject *field[C_COUNT]; /* borrowed */
} CoalescedView;

static int kind_matches(PyObject *value, char kind)
{
    switch (kind) {
    case 'i': return PyLong_CheckExact(value);
    case 's': return PyUnicode_CheckExact(value);
    case 'l': return PyList_CheckExact(value);
    case 't': return PyTuple_CheckExact(value);
    case 'd': return PyDict_CheckExact(value);
    case 'D': return value == Py_None || PyDict_CheckExact(value);
    case 'A': return value == Py_None || Py_IS_TYPE(value, address_type);
    default: return 0;
    }
}

/* 1 when every attribute is set and of its annotated type, else 0 (decline). */
static int read_coalesced(PyObject *obj, CoalescedView *view)
{
    if (!Py_IS_TYPE(obj, coalesced_type))
        return 0;
    for (int i = 0; i < C_COUNT; i++) {
        PyObject *value = slot(obj, coalesced_offsets[i]);
        if (value == NULL || !kind_matches(value, coalesced_kinds[i]))
            return 0;
        view->field[i] = value;
    }
    return 1;
}

/* Own references to (hold) or drop them (release) the view's attributes: the Python
 * helpers called while building cannot free what is read, whatever they do to the event. */
static void hold_view(CoalescedView *view, int hold)
{
    for (int i = 0; i < C_COUNT; i++) {
        if (hold)
            Py_INCREF(view->field[i]);
        else
            Py_DECREF(view->field[i]);
    }
}

/* 1 when records is a non-empty list of Records with int type, bytes data and trailer. */
static int records_ok(PyObject *records)
{
    if (!PyList_CheckExact(records) || PyList_GET_SIZE(records) == 0)
        return 0; /* Python raises on an empty list (zip strict) */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        if (!Py_IS_TYPE(rec, record_type))
            return 0;
        PyObject *type = slot(rec, record_offsets[R_TYPE]);
        PyObject *data = slot(rec, record_offsets[R_DATA]);
        PyObject *enriched = slot(rec, record_offsets[R_ENRICHED]);
        if (type == NULL || !PyLong_CheckExact(type) || data == NULL ||
            !PyBytes_CheckExact(data) || enriched == NULL || !PyBytes_CheckExact(enriched))
            return 0;
    }
    return 1;
}

static int record_is_syscall(PyObject *rec)
{
    PyObject *type_obj = slot(rec, record_offsets[R_TYPE]);
    if (type_obj == NULL || !PyLong_CheckExact(type_obj))
        return 0;
    int overflow = 0;
    long type = PyLong_AsLongAndOverflow(type_obj, &overflow);
    return !overflow && type == 1300;
}

/* ---- @timestamp ------------------------------------------------------------------------ */

#define MAX_SECOND 253402300799LL /* 9999-12-31T23:59:59Z */

/* value (0 <= value < 10**width) as width decimal digits at out */
static void put_digits(char *out, long long value, int width)
{
    for (int i = width - 1; i >= 0; i--, value /= 10)
        out[i] = (char)('0' + value % 10);
}

/* "%Y-%m-%dT%H:%M:%S.mmmZ"; NULL without an exception when out of range (decline). */
static PyObject *timestamp_text(PyObject *sec_obj, PyObject *msec_obj)
{
    int overflow = 0;
    long long sec = PyLong_AsLongLongAndOverflow(sec_obj, &overflow);
    if (overflow || (sec == -1 && PyErr_Occurred()))
        return NULL;
    long long msec = PyLong_AsLongLongAndOverflow(msec_obj, &overflow);
    if (overflow || (msec == -1 && PyErr_Occurred()))
        return NULL;
    if (sec < -(1LL << 62) || sec > (1LL << 62)) /* |msec / 1000| < 2**54: no overflow */
        return NULL;
    if (msec < 0 || msec >= 1000) { /* Python's divmod carry */
        long long extra = msec / 1000, rest = msec % 1000;
        if (rest < 0) {
            rest += 1000;
            extra -= 1;
        }
        sec += extra;
        msec = rest;
    }
    if (sec < 0 || sec > MAX_SECOND)
        return NULL;
    int64_t year;
    int month, day;
    civil_from_days(sec / 86400, &year, &month, &day);
    long long in_day = sec % 86400;
    char text[25] = "YYYY-MM-DDTHH:MM:SS.mmmZ";
    put_digits(text, year, 4);
    put_digits(text + 5, month, 2);
    put_digits(text + 8, day, 2);
    put_digits(text + 11, in_day / 3600, 2);
    put_digits(text + 14, in_day / 60 % 60, 2);
    put_digits(text + 17, in_day % 60, 2);
    put_digits(text + 20, msec, 3);
    return ascii_str(text, 24);
}

/* ---- event ----------------------------------------------------------------------------- */

static PyObject *outcome_of(CoalescedView *c)
{
    PyObject *outcome = c->field[C_ECS_OUTCOME];
    if (nonempty_str(outcome))
        return outcome;
    PyObject *result = c->field[C_RESULT];
    if (str_equals_ascii(result, "success"))
        return s_success;
    if (str_equals_ascii(result, "fail"))
        return s_failure;
    return s_unknown;
}

static PyObject *event_fields(CoalescedView *c)
{
    PyObject *event = PyDict_New();
    if (event == NULL)
        return NULL;
    if (PyDict_SetItem(event, s_kind, s_event) < 0 ||
        PyDict_SetItem(event, s_module, s_auditd_module) < 0 ||
        (nonempty_str(c->field[C_ACTION]) &&
         PyDict_SetItem(event, s_action, c->field[C_ACTION]) < 0) ||
        PyDict_SetItem(event, s_outcome, outcome_of(c)) < 0 ||
        PyDict_SetItem(event, s_sequence, c->field[C_SERIAL]) < 0)
        goto fail;
    if (PyTuple_GET_SIZE(c->field[C_ECS_CATEGORY]) > 0 &&
        set_steal(event, s_category, PySequence_List(c->field[C_ECS_CATEGORY])) < 0)
        goto fail;
    if (PyTuple_GET_SIZE(c->field[C_ECS_TYPE]) > 0 &&
        set_steal(event, s_type, PySequence_List(c->field[C_ECS_TYPE])) < 0)
        goto fail;
    return event;
fail:
    Py_DECREF(event);
    return NULL;
}

/* ---- auditd ------------------------------------------------------------------------------ */


static PyObject *nul_socket_needle; /* "\x00socket_" */

static int starts_with_socket_(PyObject *key)
{
    static const char prefix[] = "socket_";
    if (PyUnicode_GET_LENGTH(key) < 7)
        return 0;
    for (Py_ssize_t i = 0; i < 7; i++)
        if (PyUnicode_READ_CHAR(key, i) != (Py_UCS4)prefix[i])
            return 0;
    return 1;
}

/* "\x00socket_" in "\x00" + "\x00".join(data) holds for a key starting with socket_ or
 * holding NUL + socket_ (the needle has no NUL after its first character). */
static int key_wants_nesting(PyObject *key)
{
    if (starts_with_socket_(key))
        return 1;
    if (PyUnicode_FindChar(key, 0, 0, PyUnicode_GET_LENGTH(key), 1) < 0)
        return 0;
    Py_ssize_t at = PyUnicode_Find(key, nul_socket_needle, 0, PY_SSIZE_T_MAX, 1);
    return at == -2 ? -1 : at >= 0;
}

/* Set target[key] = value, dropping the reference to key (NULL key: error passes). */
static int set_steal_key(PyObject *target, PyObject *key, PyObject *value)
{
    if (key == NULL)
        return -1;
    int rc = PyDict_SetItem(target, key, value);
    Py_DECREF(key);
    return rc;
}

/* _data_fields: data itself (most events), or a copy with socket_* under "socket". */
static PyObject *data_fields(PyObject *data)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    int nest = 0;
    while (PyDict_Next(data, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return NULL; /* Python's join raises */
        int wants = key_wants_nesting(key);
        if (wants < 0)
            return NULL;
        nest |= wants;
    }
    if (!nest)
        return Py_NewRef(data);
    /* A "socket" key of its own is odd (Python would nest into or overwrite it). */
    if (PyDict_GetItemWithError(data, s_socket) != NULL || PyErr_Occurred())
        return NULL;
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    pos = 0;
    while (PyDict_Next(data, &pos, &key, &value)) {
        if (!starts_with_socket_(key)) {
            if (PyDict_SetItem(out, key, value) < 0)
                goto fail;
            continue;
        }
        PyObject *nested = PyDict_GetItemWithError(out, s_socket);
        if (nested == NULL) {
            if (PyErr_Occurred() || set_steal(out, s_socket, PyDict_New()) < 0)
                goto fail;
            nested = PyDict_GetItemWithError(out, s_socket);
            if (nested == NULL)
                goto fail;
        }
        PyObject *tail = PyUnicode_Substring(key, 7, PyUnicode_GET_LENGTH(key));
        if (set_steal_key(nested, tail, value) < 0)
            goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* Put the non-empty ones of (key, value) pairs into a new dict; NULL key ends the list. */
static int put_nonempty(PyObject *target, PyObject *key1, PyObject *value1, PyObject *key2,
                        PyObject *value2, PyObject *key3, PyObject *value3)
{
    PyObject *keys[3] = {key1, key2, key3}, *values[3] = {value1, value2, value3};
    for (int i = 0; i < 3 && keys[i] != NULL; i++)
        if (nonempty_str(values[i]) && PyDict_SetItem(target, keys[i], values[i]) < 0)
            return -1;
    return 0;
}

static PyObject *summary_fields(CoalescedView *c)
{
    PyObject *summary = PyDict_New();
    if (summary == NULL)
        return NULL;
    PyObject *primary = c->field[C_ACTOR_PRIMARY], *secondary = c->field[C_ACTOR_SECONDARY];
    if (nonempty_str(primary) || nonempty_str(secondary)) {
        PyObject *actor = PyDict_New();
        if (set_steal(summary, s_actor, actor) < 0 ||
            put_nonempty(actor, s_primary, primary, s_secondary, secondary, NULL, NULL) < 0)
            goto fail;
    }
    PyObject *object_type = c->field[C_OBJECT_TYPE];
    primary = c->field[C_OBJECT_PRIMARY];
    secondary = c->field[C_OBJECT_SECONDARY];
    if (nonempty_str(object_type) || nonempty_str(primary) || nonempty_str(secondary)) {
        PyObject *obj = PyDict_New();
        if (set_steal(summary, s_object, obj) < 0 ||
            put_nonempty(obj, s_type, object_type, s_primary, primary, s_secondary,
                         secondary) < 0)
            goto fail;
    }
    if (put_nonempty(summary, s_how, c->field[C_HOW], NULL, NULL, NULL, NULL) < 0)
        goto fail;
    return summary;
fail:
    Py_DECREF(summary);
    return NULL;
}

/* list(map(dict, c.paths)): copies, since the PATH dicts are the interpreter memo's. */
static PyObject *paths_copy(PyObject *paths)
{
    Py_ssize_t count = PyList_GET_SIZE(paths);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count && i < PyList_GET_SIZE(paths); i++) {
        PyObject *item = PyList_GET_ITEM(paths, i);
        PyObject *copy = PyDict_CheckExact(item) ? PyDict_Copy(item) : NULL;
        if (copy == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, copy);
    }
    return out;
}

/* "type=NAME msg=" for a record type (new reference), memoised like ecs._RECORD_PREFIXES. */
static PyObject *record_prefix(PyObject *type)
{
    PyObject *prefix = PyDict_GetItemWithError(prefix_cache, type);
    if (prefix != NULL)
        return Py_NewRef(prefix);
    if (PyErr_Occurred())
        return NULL;
    PyObject *name = PyObject_CallOneArg(type_name_fn, type);
    if (name == NULL) {
        decline_helper_error();
        return NULL;
    }
    prefix = PyUnicode_CheckExact(name) ? PyUnicode_FromFormat("type=%U msg=", name) : NULL;
    Py_DECREF(name);
    if (prefix == NULL)
        return NULL;
    if (PyDict_GET_SIZE(prefix_cache) >= PREFIX_CACHE_MAX)
        PyDict_Clear(prefix_cache);
    if (PyDict_SetItem(prefix_cache, type, prefix) < 0)
        Py_CLEAR(prefix);
    return prefix;
}

/* A record's "type=NAME msg=" prefix (new reference) and its data (borrowed, bytes);
 * NULL, with an exception or without one to decline. */
static PyObject *record_prefix_and_data(PyObject *rec, PyObject **data)
{
    PyObject *type = slot(rec, record_offsets[R_TYPE]);
    PyObject *prefix = NULL;
    if (type != NULL && PyLong_CheckExact(type)) {
        Py_INCREF(type);
        prefix = record_prefix(type);
        Py_DECREF(type);
    }
    *data = slot(rec, record_offsets[R_DATA]); /* after the Python call */
    if (prefix != NULL && (*data == NULL || !PyBytes_CheckExact(*data)))
        Py_CLEAR(prefix); /* changed under us: decline */
    return prefix;
}

/* prefix + escape(data): one record's raw_record_text; NULL without an exception to
 * decline. */
static PyObject *prefixed_text(PyObject *prefix, PyObject *data)
{
    PyObject *text = NULL;
    if (PyUnicode_IS_ASCII(prefix)) {
        text = escape_with_prefix(prefix, (const unsigned char *)PyBytes_AS_STRING(data),
                                  PyBytes_GET_SIZE(data));
    } else {
        PyObject *escaped = escape_bytes(data);
        text = escaped ? PyUnicode_Concat(prefix, escaped) : NULL;
        Py_XDECREF(escaped);
    }
    return text;
}

/* "type=NAME msg=" + escape(data) of one record (raw_record_text); NULL without an
 * exception to decline. */
static PyObject *record_text(PyObject *rec)
{
    PyObject *data;
    PyObject *prefix = record_prefix_and_data(rec, &data);
    if (prefix == NULL)
        return NULL;
    PyObject *text = prefixed_text(prefix, data);
    Py_DECREF(prefix);
    return text;
}

/* raw_records_text: record_text of each record. */
static PyObject *records_text(PyObject *records)
{
    Py_ssize_t count = PyTuple_GET_SIZE(records);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *text = record_text(PyTuple_GET_ITEM(records, i));
        if (text == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, text);
    }
    return out;
}

static PyObject *auditd_fields(PyObject *records, CoalescedView *c)
{
    PyObject *auditd = PyDict_New();
    if (auditd == NULL)
        return NULL;
    PyObject *session = c->field[C_SESSION];
    if (PyDict_SetItem(auditd, s_message_type, c->field[C_RECORD_TYPE]) < 0 ||
        PyDict_SetItem(auditd, s_category, c->field[C_CATEGORY]) < 0 ||
        PyDict_SetItem(auditd, s_sequence, c->field[C_SERIAL]) < 0 ||
        PyDict_SetItem(auditd, s_result, c->field[C_RESULT]) < 0 ||
        set_steal(auditd, s_data, data_fields(c->field[C_DATA])) < 0)
        goto fail;
    if (nonempty_str(session) && !str_equals_ascii(session, "unset") &&
        PyDict_SetItem(auditd, s_session, session) < 0)
        goto fail;
    if (set_steal(auditd, s_summary, summary_fields(c)) < 0)
        goto fail;
    if (PyList_GET_SIZE(c->field[C_PATHS]) > 0 &&
        set_steal(auditd, s_paths, paths_copy(c->field[C_PATHS])) < 0)
        goto fail;
    if (set_steal(auditd, s_records, records_text(records)) < 0)
        goto fail;
    return auditd;
fail:
    Py_DECREF(auditd);
    return NULL;
}

/* ---- user -------------------------------------------------------------------------------- */

/* ecs._ID_FIELDS in its order, with the parents of each id under ``user``. */
enum { ID_UID, ID_GID, ID_EUID, ID_EGID, ID_SUID, ID_SGID, ID_FSUID, ID_FSGID, ID_AUID, ID_COUNT };
static const char *const id_names[ID_COUNT] = {"uid",  "gid",   "euid",  "egid", "suid",
                                               "sgid", "fsuid", "fsgid", "auid"};
static PyObject **const id_parents[ID_COUNT][2] = {
    {NULL, NULL},           {&s_group, NULL},       {&s_effective, NULL},
    {&s_effective, &s_group}, {&s_saved, NULL},     {&s_saved, &s_group},
    {&s_filesystem, NULL},  {&s_filesystem, &s_group}, {&s_audit, NULL}};
/* ecs._KERNEL_ID_LAYOUT: the id fields of a kernel SYSCALL record, in its order. */
static const int kernel_layout[ID_COUNT] = {ID_AUID, ID_UID,   ID_GID,  ID_EUID, ID_SUID,
                                            ID_FSUID, ID_EGID, ID_SGID, ID_FSGID};

static int id_field_index(PyObject *key)
{
    for (int i = 0; i < ID_COUNT; i++)
        if (str_equals_ascii(key, id_names[i]))
            return i;
    return -1;
}

/* 1 when every key and value of the ids is a str (what coalesce makes), else 0. */
static int ids_are_text(PyObject *ids)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(ids, &pos, &key, &value))
        if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(value))
            return 0;
    return 1;
}

static int is_kernel_layout(PyObject *ids)
{
    if (PyDict_GET_SIZE(ids) != ID_COUNT)
        return 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    for (int i = 0; PyDict_Next(ids, &pos, &key, &value) && i < ID_COUNT; i++)
        if (!str_equals_ascii(key, id_names[kernel_layout[i]]) ||
            str_equals_ascii(value, "unset"))
            return 0;
    return 1;
}

/* {"id": id} or {"id": id, "group": {"id": group_id}} */
static PyObject *id_dict(PyObject *id, PyObject *group_id)
{
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    if (PyDict_SetItem(out, s_id, id) < 0 ||
        (group_id != NULL && set_steal(out, s_group, id_dict(group_id, NULL)) < 0)) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* The literal _user_fields makes of the kernel layout. */
static PyObject *kernel_layout_user(PyObject *ids)
{
    PyObject *v[ID_COUNT]; /* auid, uid, gid, euid, suid, fsuid, egid, sgid, fsgid */
    Py_ssize_t pos = 0;
    PyObject *key;
    for (int i = 0; i < ID_COUNT && PyDict_Next(ids, &pos, &key, &v[i]); i++)
        ;
    PyObject *user = PyDict_New();
    if (user == NULL)
        return NULL;
    if (set_steal(user, s_audit, id_dict(v[0], NULL)) < 0 ||
        PyDict_SetItem(user, s_id, v[1]) < 0 ||
        set_steal(user, s_group, id_dict(v[2], NULL)) < 0 ||
        set_steal(user, s_effective, id_dict(v[3], v[6])) < 0 ||
        set_steal(user, s_saved, id_dict(v[4], v[7])) < 0 ||
        set_steal(user, s_filesystem, id_dict(v[5], v[8])) < 0) {
        Py_DECREF(user);
        return NULL;
    }
    return user;
}

/* target.setdefault(key, {}) (borrowed); NULL without an exception when the existing
 * value is not a dict (Python would raise setting an item on it). */
static PyObject *child_dict(PyObject *target, PyObject *key)
{
    PyObject *child = PyDict_GetItemWithError(target, key);
    if (child != NULL)
        return PyDict_CheckExact(child) ? child : NULL;
    if (PyErr_Occurred() || set_steal(target, key, PyDict_New()) < 0)
        return NULL;
    return PyDict_GetItemWithError(target, key);
}

/* _user_ids: each id under its Auditbeat path, unset ones left out. */
static PyObject *general_user(PyObject *ids)
{
    PyObject *user = PyDict_New();
    if (user == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(ids, &pos, &key, &value)) {
        if (str_equals_ascii(value, "unset"))
            continue;
        int index = id_field_index(key);
        PyObject *target = user;
        if (index < 0)
            target = child_dict(user, key);
        for (int p = 0; index >= 0 && p < 2 && id_parents[index][p] && target; p++)
            target = child_dict(target, *id_parents[index][p]);
        if (target == NULL || PyDict_SetItem(target, s_id, value) < 0) {
            Py_DECREF(user);
            return NULL;
        }
    }
    return user;
}

/* _put: target[a][b]…[last] = value, replacing what is not a dict on the way. */
static int put_path(PyObject *target, PyObject *const *path, int length, PyObject *value)
{
    for (int i = 0; i < length - 1; i++) {
        PyObject *child = PyDict_GetItemWithError(target, path[i]);
        if (child == NULL && PyErr_Occurred())
            return -1;
        if (child == NULL || !PyDict_Check(child)) {
            if (set_steal(target, path[i], PyDict_New()) < 0)
                return -1;
            child = PyDict_GetItemWithError(target, path[i]);
            if (child == NULL)
                return -1;
        }
        target = child;
    }
    return PyDict_SetItem(target, path[length - 1], value);
}

/* enriched key ("EUID") lower-cased; NULL without an exception for non-ASCII keys. */
static PyObject *ascii_lower(PyObject *key)
{
    if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key))
        return NULL;
    Py_ssize_t len = PyUnicode_GET_LENGTH(key);
    PyObject *out = PyUnicode_New(len, 127);
    if (out == NULL)
        return NULL;
    const char *from = PyUnicode_DATA(key);
    char *to = PyUnicode_DATA(out);
    for (Py_ssize_t i = 0; i < len; i++)
        to[i] = (from[i] >= 'A' && from[i] <= 'Z') ? (char)(from[i] + 32) : from[i];
    return out;
}

/* One ENRICHED name: user.<path of id_key>.name = escape(name), if the id is set. */
static int put_enriched_name(PyObject *user, PyObject *ids, PyObject *id_key, PyObject *name)
{
    PyObject *id = PyDict_GetItemWithError(ids, id_key);
    if (id == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (str_equals_ascii(id, "unset"))
        return 0;
    if (!PyBytes_CheckExact(name))
        return -1; /* decline */
    PyObject *path[4];
    int length = 0, index = id_field_index(id_key);
    if (index < 0)
        path[length++] = id_key;
    for (int p = 0; index >= 0 && p < 2 && id_parents[index][p]; p++)
        path[length++] = *id_parents[index][p];
    path[length++] = s_name;
    PyObject *text = escape_bytes(name);
    if (text == NULL)
        return -1;
    int rc = put_path(user, path, length, text);
    Py_DECREF(text);
    return rc;
}

/* The ENRICHED trailer (borrowed, NULL if unset) of the event's SYSCALL record, else of
 * its first: auditd's names of the ids are there. */
static PyObject *primary_enriched(PyObject *records)
{
    PyObject *primary = PyTuple_GET_ITEM(records, 0);
    for (Py_ssize_t i = 0; !record_is_syscall(primary) && i < PyTuple_GET_SIZE(records); i++)
        if (record_is_syscall(PyTuple_GET_ITEM(records, i)))
            primary = PyTuple_GET_ITEM(records, i);
    return slot(primary, record_offsets[R_ENRICHED]);
}

/* auditd's ENRICHED trailer of the event's SYSCALL (else first) record names the ids. */
static int enriched_names(PyObject *user, PyObject *records, PyObject *ids)
{
    PyObject *enriched = primary_enriched(records);
    if (enriched == NULL || !PyBytes_CheckExact(enriched))
        return -1; /* decline */
    if (PyBytes_GET_SIZE(enriched) == 0)
        return 0;
    Py_INCREF(enriched);
    PyObject *fields = PyObject_CallOneArg(enriched_fields_fn, enriched);
    Py_DECREF(enriched);
    if (fields == NULL) {
        decline_helper_error();
        return -1;
    }
    int rc = PyDict_CheckExact(fields) ? 0 : -1;
    Py_ssize_t pos = 0;
    PyObject *key, *name;
    while (rc == 0 && PyDict_Next(fields, &pos, &key, &name)) {
        PyObject *id_key = ascii_lower(key);
        rc = id_key ? put_enriched_name(user, ids, id_key, name) : -1;
        Py_XDECREF(id_key);
    }
    Py_DECREF(fields);
    return rc;
}

static PyObject *user_fields(PyObject *records, CoalescedView *c)
{
    PyObject *ids = c->field[C_USER_IDS], *selinux = c->field[C_USER_SELINUX];
    if (!ids_are_text(ids))
        return NULL;
    PyObject *user = is_kernel_layout(ids) ? kernel_layout_user(ids) : general_user(ids);
    if (user == NULL)
        return NULL;
    if ((PyDict_GET_SIZE(selinux) > 0 && set_steal(user, s_selinux, PyDict_Copy(selinux)) < 0) ||
        enriched_names(user, records, ids) < 0) {
        Py_DECREF(user);
        return NULL;
    }
    return user;
}

/* As Auditbeat: user.effective goes when it repeats the user's id or name. */
static int drop_repeated_effective(PyObject *user)
{
    PyObject *effective = PyDict_GetItemWithError(user, s_effective);
    if (effective == NULL || !PyDict_Check(effective))
        return PyErr_Occurred() ? -1 : 0;
    PyObject *keys[2] = {s_id, s_name};
    for (int i = 0; i < 2; i++) {
        PyObject *mine = PyDict_GetItemWithError(user, keys[i]);
        if (mine == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        int truthy = PyObject_IsTrue(mine);
        if (truthy <= 0) {
            if (truthy < 0)
                return -1;
            continue;
        }
        PyObject *theirs = PyDict_GetItemWithError(effective, keys[i]);
        if (theirs == NULL && PyErr_Occurred())
            return -1;
        int same = PyObject_RichCompareBool(theirs ? theirs : Py_None, mine, Py_EQ);
        if (same < 0)
            return -1;
        if (same)
            return PyDict_DelItem(user, s_effective);
    }
    return 0;
}

/* ---- process, addresses, host ------------------------------------------------------------- */

static PyObject *one_item_dict(PyObject *key, PyObject *value)
{
    PyObject *out = PyDict_New();
    if (out != NULL && PyDict_SetItem(out, key, value) < 0)
        Py_CLEAR(out);
    return out;
}

/* ecs._as_int: 1 and a new int for up to 20 ASCII digits that fit in 64 bits unsigned,
 * 0 otherwise, -1 on error. */
static int as_int(PyObject *text, PyObject **out)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(text);
    if (!PyUnicode_IS_ASCII(text) || len == 0 || len > 20)
        return 0;
    const char *digits = PyUnicode_DATA(text);
    unsigned long long value = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (digits[i] < '0' || digits[i] > '9')
            return 0;
        unsigned long long digit = (unsigned long long)(digits[i] - '0');
        if (value > (ULLONG_MAX - digit) / 10)
            return 0; /* JSON encoders stop at 64 bits */
        value = value * 10 + digit;
    }
    *out = PyLong_FromUnsignedLongLong(value);
    return *out ? 1 : -1;
}

static int put_int(PyObject *target, PyObject *key, PyObject *text)
{
    PyObject *number = NULL;
    int found = as_int(text, &number);
    return found <= 0 ? found : set_steal(target, key, number);
}

static PyObject *process_fields(CoalescedView *c)
{
    PyObject *process = PyDict_New();
    if (process == NULL)
        return NULL;
    PyObject *ppid = NULL, *args = c->field[C_ARGS];
    int found_ppid;
    if (put_int(process, s_pid, c->field[C_PID]) < 0 ||
        (found_ppid = as_int(c->field[C_PPID], &ppid)) < 0 ||
        (found_ppid && set_steal(process, s_parent, one_item_dict(s_pid, ppid)) < 0) ||
        put_nonempty(process, s_title, c->field[C_TITLE], s_name, c->field[C_NAME],
                     s_executable, c->field[C_EXE]) < 0 ||
        put_nonempty(process, s_working_directory, c->field[C_CWD], NULL, NULL, NULL, NULL) < 0)
        goto fail;
    Py_CLEAR(ppid);
    if (PyTuple_GET_SIZE(args) > 0 &&
        (set_steal(process, s_args, PySequence_List(args)) < 0 ||
         set_steal(process, s_args_count, PyLong_FromSsize_t(PyTuple_GET_SIZE(args))) < 0))
        goto fail;
    return process;
fail:
    Py_XDECREF(ppid);
    Py_DECREF(process);
    return NULL;
}

static PyObject *address_fields(PyObject *address)
{
    PyObject *ip = slot(address, address_offsets[A_IP]);
    PyObject *port = slot(address, address_offsets[A_PORT]);
    PyObject *path = slot(address, address_offsets[A_PATH]);
    if (!ip || !port || !path || !PyUnicode_CheckExact(ip) || !PyUnicode_CheckExact(port) ||
        !PyUnicode_CheckExact(path))
        return NULL; /* decline */
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    if (put_nonempty(out, s_ip, ip, NULL, NULL, NULL, NULL) < 0 || put_int(out, s_port, port) < 0 ||
        put_nonempty(out, s_path, path, NULL, NULL, NULL, NULL) < 0)
        Py_CLEAR(out);
    return out;
}

/* ecs.host_name: plain printable ASCII without '%' as is, else escaped. */
static PyObject *host_name(PyObject *node)
{
    if (PyUnicode_IS_ASCII(node)) {
        const char *text = PyUnicode_DATA(node);
        Py_ssize_t len = PyUnicode_GET_LENGTH(node), i = 0;
        while (i < len && passes_escape((unsigned char)text[i]))
            i++;
        if (i == len)
            return Py_NewRef(node);
    }
    PyObject *raw = PyUnicode_AsEncodedString(node, "utf-8", "surrogateescape");
    if (raw == NULL) {
        decline_helper_error(); /* a lone surrogate outside U+DC80..U+DCFF: Python raises */
        return NULL;
    }
    PyObject *out = escape_bytes(raw);
    Py_DECREF(raw);
    return out;
}

/* ---- the document ------------------------------------------------------------------------- */

static int add_ecs_entities(PyObject *doc, PyObject *entities)
{
    PyObject *rc = PyObject_CallFunctionObjArgs(add_ecs_entities_fn, doc, entities, NULL);
    if (rc == NULL) {
        decline_helper_error();
        return -1;
    }
    Py_DECREF(rc);
    return 0;
}

/* The parts after the user: process, file, source … error, in build_doc's order. */
static int add_tail_fields(PyObject *doc, CoalescedView *c)
{
    PyObject *process = process_fields(c);
    if (process == NULL)
        return -1;
    int rc = PyDict_GET_SIZE(process) > 0 ? PyDict_SetItem(doc, s_process, process) : 0;
    Py_DECREF(process);
    if (rc < 0 ||
        (c->field[C_FILE] != Py_None && PyDict_SetItem(doc, s_file, c->field[C_FILE]) < 0) ||
        (c->field[C_SOURCE] != Py_None &&
         set_steal(doc, s_source, address_fields(c->field[C_SOURCE])) < 0) ||
        (c->field[C_DESTINATION] != Py_None &&
         set_steal(doc, s_destination, address_fields(c->field[C_DESTINATION])) < 0) ||
        (nonempty_str(c->field[C_DIRECTION]) &&
         set_steal(doc, s_network, one_item_dict(s_direction, c->field[C_DIRECTION])) < 0))
        return -1;
    if (nonempty_str(c->field[C_NODE])) {
        PyObject *name = host_name(c->field[C_NODE]);
        if (name == NULL || set_steal(doc, s_host, one_item_dict(s_name, name)) < 0) {
            Py_XDECREF(name);
            return -1;
        }
        Py_DECREF(name);
    }
    if (PyList_GET_SIZE(c->field[C_TAGS]) > 0 &&
        set_steal(doc, s_tags, PySequence_List(c->field[C_TAGS])) < 0)
        return -1;
    /* The event's own warnings list, as Python shares it. */
    if (PyList_GET_SIZE(c->field[C_WARNINGS]) > 0 &&
        set_steal(doc, s_error, one_item_dict(s_message, c->field[C_WARNINGS])) < 0)
        return -1;
    return 0;
}

/* The document, or NULL: with an exception on error, without one to decline. */
static PyObject *build(PyObject *records, CoalescedView *c)
{
    PyObject *doc = PyDict_New();
    if (doc == NULL)
        return NULL;
    PyObject *user = user_fields(records, c);
    if (user == NULL)
        goto fail;
    int rc = set_steal(doc, s_timestamp, timestamp_text(c->field[C_SEC], c->field[C_MSEC])) < 0 ||
             set_steal(doc, s_event, event_fields(c)) < 0 ||
             set_steal(doc, s_auditd, auditd_fields(records, c)) < 0 ||
             PyDict_SetItem(doc, s_user, user) < 0;
    PyObject *entities = c->field[C_ECS_ENTITIES];
    if (!rc && entities != Py_None && PyDict_GET_SIZE(entities) > 0)
        rc = add_ecs_entities(doc, entities) < 0;
    if (!rc)
        rc = drop_repeated_effective(user) < 0;
    Py_DECREF(user);
    if (rc || add_tail_fields(doc, c) < 0)
        goto fail;
    return doc;
fail:
    Py_DECREF(doc);
    return NULL;
}

static PyObject *py_build_doc(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "build_doc(records, coalesced) takes 2 arguments");
        return NULL;
    }
    CoalescedView view;
    if (!records_ok(args[0]) || !read_coalesced(args[1], &view))
        Py_RETURN_NONE;
    /* Own references for the whole call: the Python helpers called on the way cannot
     * free what is read here, whatever they do to the list or the event. */
    PyObject *records = PyList_AsTuple(args[0]);
    if (records == NULL)
        return NULL;
    hold_view(&view, 1);
    PyObject *doc = build(records, &view);
    hold_view(&view, 0);
    Py_DECREF(records);
    if (doc == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return doc;
}

#include "ecs_write.h"
#include "ecs_event.h"

/* ---- module ----------------------------------------------------------------------------- */

static int load_python_side(void)
{
#define INTERN_STRING(var, text)                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                 \
        return -1;
    STRING_LIST(INTERN_STRING)
#undef INTERN_STRING
    nul_socket_needle = PyUnicode_FromStringAndSize("\0socket_", 8);
    prefix_cache = PyDict_New();
    coalesced_type = import_type("assembler.coalesced", "Coalesced");
    address_type = import_type("assembler.coalesced", "Address");
    record_type = import_type("assembler.parse", "Record");
    type_name_fn = import_attr("auditstream.logline", "type_name");
    enriched_fields_fn = import_attr("assembler.parse", "enriched_fields");
    add_ecs_entities_fn = import_attr("assembler.ecs", "_add_ecs_entities");
    written_doc_type = import_type("auditstream.doc_text", "WrittenDoc");
    if (!nul_socket_needle || !prefix_cache || !coalesced_type || !address_type ||
        !record_type || !type_name_fn || !enriched_fields_fn || !add_ecs_entities_fn ||
        !written_doc_type)
        return -1;
    if (slot_offsets(coalesced_type, coalesced_names, coalesced_offsets, C_COUNT) < 0 ||
        slot_offsets(record_type, record_names, record_offsets, R_COUNT) < 0 ||
        slot_offsets(address_type, address_names, address_offsets, A_COUNT) < 0)
        return -1;
    return fused_ready();
}

static PyMethodDef methods[] = {
    {"build_doc", (PyCFunction)(void (*)(void))py_build_doc, METH_FASTCALL,
     "build_doc(records, coalesced) -> dict | None: assembler.ecs.build_doc, or None when "
     "this event is left to Python."},
    {"write_doc", (PyCFunction)(void (*)(void))py_write_doc, METH_FASTCALL,
     "write_doc(records, coalesced, completed_by) -> WrittenDoc | None: the JSON text of "
     "build_doc's doc with completed_by, and its head; None when left to the dict path."},
    {"escape", py_escape, METH_O, "escape(raw: bytes) -> str: auditstream.escape.escape."},
    {"_set_fused", py_set_fused, METH_O,
     "_set_fused(on) -> bool: whether EventCompleter tries fused events (ecs_fused.h) first; "
     "returns the previous setting (tests and benchmarks compare the two ways)."},
    {"_fused_counts", py_fused_counts, METH_NOARGS,
     "_fused_counts() -> (written, unwritten): fused events whose doc was written here, and "
     "those read but left to the Coalesced way, since the module was loaded (for the tests)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_ecs",
                                    "assembler.ecs.build_doc in C (see assembler/native.py).",
                                    -1, methods};

PyMODINIT_FUNC PyInit_native_ecs(void)
{
    if (load_python_side() < 0)
        return NULL;
    PyObject *created = PyModule_Create(&module);
    if (created != NULL && completer_ready(created) < 0)
        Py_CLEAR(created);
    return created;
}
