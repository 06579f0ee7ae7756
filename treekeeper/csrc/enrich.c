/* treekeeper.native_enrich: treekeeper/enrich.py's enrich_doc() and lifecycle_doc() in C,
 * and of treekeeper/tree.py's ProcessTable._observe() the preamble, plain events, and the
 * common forks, execs and exits (enrich_lifecycle.h, enrich_fork.h, enrich_exec.h,
 * enrich_exit.h).
 *
 * Reference: treekeeper/enrich.py (enrich_doc, _resolve_parent, iso_ms, _set_absent) and
 * treekeeper/tree.py (ProcessTable.event_ms, lookup, get, former_parent, lineage, _observe,
 * _actor; Process.entry). The Python functions stay the reference.
 *
 * enrich(table, doc) -> bool: True when the doc was enriched here exactly as enrich_doc
 * would (same keys, values, key order, the same shared objects: process.args is the
 * Process's own list, ancestry elements are the cached Process.entry() dicts) with the
 * same side effects on the table (event_ms's _ts_last/_ts_last_ms/_ts_head/_ts_base,
 * last_ms and stats.bad_times; Process.ancestry_entry through Process.entry()). False:
 * declined, nothing changed, the caller runs enrich_doc. An exception raised by a Python
 * call made here (Process.entry() on a cache miss) propagates after the doc changes that
 * enrich_doc makes before that call, as enrich_doc's own exception would.
 *
 * observe(table, doc) -> True, False, a list or (actor, at_ms): _observe's preamble
 * (event_ms and _actor) when _actor would find a known, confirmed process, same ppid, its
 * image known. True: the syscall is no fork, exec or exit, so _observe would change nothing
 * but event_ms's bookkeeping and return []; that bookkeeping is done here. A list: a fork,
 * exec or exit the code here did whole (enrich_fork.h, enrich_exec.h, enrich_exit.h), its
 * lifecycle docs. (actor, at_ms): any other fork, exec or exit; the bookkeeping is done
 * here and the caller runs _act(doc, actor, at_ms, out). A placeholder (inferred) whose
 * event shows the image it has is taken too: _take_image then only moves image_ms and
 * drops the cached ancestry entry, done here as well. False: declined, nothing changed,
 * the caller runs _observe.
 *
 * Declined: a table, process, stats, config or container of another type than the
 * reference's classes, a ProcessTable or Process whose methods are not those of import time
 * (monkeypatched; checked through the type's version tag, so at no cost while unchanged), an
 * attribute of an unexpected type (ints that are not exact ints or beyond 64 bits, keys
 * that are not tuples), dict or int subclasses in the doc where Python's isinstance()
 * accepts them, an @timestamp that is not ASCII, or whose date part differs from the
 * cached one and is not of the form YYYY-MM-DDTHH:MM:SS with valid values, a process
 * start outside the years 1000..9999 (iso_ms writes years below 1000 without padding),
 * a lineage longer than LINEAGE_MAX, any error while deciding. Not checked: module
 * functions of enrich.py or tree.py replaced at run time (iso_ms, _pid, ...), and methods set
 * on one table instance rather than on its class.
 *
 * Attributes are read by slot offset (Process, TreeStats, TableConfig and ContainerRef are
 * slots dataclasses) and from the ProcessTable's instance dict (a plain class: the module
 * checks at import that the class defines none of those names itself).
 *
 * lifecycle_doc(table, action, proc, at_ms) -> dict: enrich.lifecycle_doc (enrich_lifecycle.h).
 *
 * The module imports treekeeper.tree when it is imported: treekeeper/tree.py loads it on
 * its last line, once the classes exist.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#define PYCLASS_MODULE "native_enrich"
#include "pyclass.h"
#include "civil_days.h"
#include <stdint.h>
#include <string.h>

/* Longest lineage handled here (the default ancestry_max_depth is 16); longer: Python. */
#define LINEAGE_MAX 128

/* ---- Python objects looked up at import ------------------------------------------ */

static PyTypeObject *process_type, *table_type, *stats_type, *config_type, *container_type;
static unsigned int process_version, table_version;

/* The methods the Python code here stands for: while the classes hold these very objects
 * (nothing monkeypatched), the code here does what they do. */
static const char *const table_method_names[] = {
    "event_ms", "get", "lookup", "former_parent", "lineage", "observe", "_observe", "_actor",
    "enrich", "_act", "_fork", "_insert", "_set_parent", "_is_forked_child", "_exit",
    "_reparent_children", "_exec", "_take_image"};
#define TABLE_METHODS ((int)(sizeof(table_method_names) / sizeof(table_method_names[0])))
static const char *const process_method_names[] = {"entry", "key", "entry_fragment"};
#define PROCESS_METHODS ((int)(sizeof(process_method_names) / sizeof(process_method_names[0])))
static PyObject *table_method_keys[TABLE_METHODS], *table_methods[TABLE_METHODS];
static PyObject *process_method_keys[PROCESS_METHODS], *process_methods[PROCESS_METHODS];
static PyObject *fork_syscalls, *exec_syscalls;
static long previous_chain_max;

#define STRING_LIST(X)                                                                    \
    X(s_process, "process") X(s_pid, "pid") X(s_entity_id, "entity_id")                  \
    X(s_start, "start") X(s_executable, "executable") X(s_name, "name")                  \
    X(s_args, "args") X(s_parent, "parent") X(s_ancestry, "ancestry")                    \
    X(s_container, "container") X(s_id, "id") X(s_runtime, "runtime")                    \
    X(s_timestamp, "@timestamp") X(s_auditd, "auditd") X(s_data, "data")                 \
    X(s_syscall, "syscall") X(s_exit, "exit") X(s_exit_group, "exit_group")              \
    X(s_entry, "entry") X(s_entry_fragment, "entry_fragment") X(s_config, "config")     \
    X(s_processes, "processes")                                                          \
    X(s_current, "current") X(s_stats, "stats") X(s_last_ms, "last_ms")                  \
    X(s_ts_head, "_ts_head") X(s_ts_base, "_ts_base") X(s_ts_last, "_ts_last")           \
    X(s_ts_last_ms, "_ts_last_ms") X(s_working_directory, "working_directory")            \
    X(s_end, "end") X(s_change, "change") X(s_exit_code, "exit_code") X(s_kind, "kind")   \
    X(s_event, "event") X(s_category, "category") X(s_type, "type") X(s_action, "action") \
    X(s_host, "host") X(s_process_started, "process-started")                            \
    X(s_process_exec, "process-exec") X(s_process_exited, "process-exited")              \
    X(s_container_first_seen, "container-first-seen") X(s_container_gone, "container-gone") \
    X(s_result, "result") X(s_fail, "fail") X(s_clone, "clone") X(s_fork, "fork")         \
    X(s_vfork, "vfork") X(s_a0, "a0") X(s_proc_source, "proc_source")                    \
    X(s_runc_init_stage, "runc:[2:INIT]") X(s_exited, "_exited") X(s_success, "success")    \
    X(s_title, "title") X(s_classify, "classify")                                        \
    X(s_runtime_binaries, "_RUNTIME_BINARIES") X(s_shim_prefix, "containerd-shim")        \
    X(s_empty, "")

#define DECLARE_STRING(var, text) static PyObject *var;
STRING_LIST(DECLARE_STRING)
#undef DECLARE_STRING

/* ---- slot offsets ----------------------------------------------------------------- */

#define PROCESS_FIELDS(X)                                                                 \
    X(P_PID, "pid") X(P_START_MS, "start_ms") X(P_ENTITY_ID, "entity_id")                \
    X(P_PPID, "ppid") X(P_PARENT, "parent") X(P_CREATOR, "creator")                      \
    X(P_EXECUTABLE, "executable") X(P_NAME, "name") X(P_ARGS, "args")                    \
    X(P_STARTED_AT, "started_at") X(P_IMAGE_MS, "image_ms") X(P_INFERRED, "inferred")    \
    X(P_TENTATIVE, "tentative") X(P_EXITED_AT, "exited_at") X(P_CONTAINER, "container")  \
    X(P_PREVIOUS, "previous") X(P_REAPED_FROM, "reaped_from")                            \
    X(P_ANCESTRY_ENTRY, "ancestry_entry") X(P_CWD, "cwd") X(P_EXIT_CODE, "exit_code")     \
    X(P_MAYBE_THREADED, "maybe_threaded") X(P_PID_NS, "pid_ns") X(P_ROLE, "role")        \
    X(P_MANAGED, "managed") X(P_TITLE, "title") X(P_CHILDREN, "children")                \
    X(P_EXEC_MS, "exec_ms") X(P_ANCESTRY_FRAGMENT, "ancestry_fragment")                   \
    X(P_FRAGMENT_OF, "fragment_of")

#define FIELD_ENUM(id, name) id,
enum { PROCESS_FIELDS(FIELD_ENUM) P_COUNT };
#undef FIELD_ENUM
#define FIELD_NAME(id, name) name,
static const char *const process_names[P_COUNT] = {PROCESS_FIELDS(FIELD_NAME)};
#undef FIELD_NAME
static Py_ssize_t process_offsets[P_COUNT];

enum { ST_BAD_TIMES, ST_THREADS_IGNORED, ST_PROCESSES_CREATED, ST_COUNT };
static const char *const stats_names[ST_COUNT] = {"bad_times", "threads_ignored",
                                                  "processes_created"};
static Py_ssize_t stats_offsets[ST_COUNT];
enum { CF_DEPTH, CF_HOST, CF_MAX_PROCESSES, CF_FRAGMENTS, CF_COUNT };
static const char *const config_names[CF_COUNT] = {"ancestry_max_depth", "host",
                                                   "max_processes", "ancestry_fragments"};
static Py_ssize_t config_offsets[CF_COUNT];
/* RuntimeRole.NONE, PidNs members, the int 1, Process()'s keywords for a forked child */
static PyObject *role_none, *pidns_unknown, *pidns_host, *pidns_nested, *one, *fork_kwnames;
static PyObject *heappush; /* heapq.heappush (tree.py's _exit), taken at import */
static PyObject *role_runtime_init, *role_shim, *role_runtime, *containers_module;
static PyObject *classify_imported; /* containers.classify as imported (plain_image) */
enum { CR_ID, CR_RUNTIME, CR_COUNT };
static const char *const container_names[CR_COUNT] = {"id", "runtime"};
static Py_ssize_t container_offsets[CR_COUNT];

static inline PyObject *pslot(PyObject *proc, int field)
{
    return slot(proc, process_offsets[field]);
}

/* Set a Process slot to value (a new reference, stolen). */
static inline void pslot_set(PyObject *proc, int field, PyObject *value)
{
    PyObject **at = (PyObject **)((char *)proc + process_offsets[field]);
    Py_XSETREF(*at, value);
}

/* ---- the classes unchanged ------------------------------------------------------- */

/* The ProcessTable class defines none of the attributes read from an instance's dict (a
 * property or slot would win over the dict), nor its own attribute access. */
#define TABLE_ATTRS 11
static PyObject *table_attr_keys[TABLE_ATTRS];

static int table_class_plain(void)
{
    if (table_type->tp_getattro != PyObject_GenericGetAttr ||
        table_type->tp_setattro != PyObject_GenericSetAttr)
        return 0;
    for (int i = 0; i < TABLE_ATTRS; i++)
        if (_PyType_Lookup(table_type, table_attr_keys[i]) != NULL)
            return 0;
    return 1;
}

/* The class as at import: its version tag is the one recorded (no attribute of it was set
 * since), or it holds the recorded methods again (a patch undone: the new tag is taken). */
static int class_as_imported(PyTypeObject *type, unsigned int *version, PyObject *const *keys,
                             PyObject *const *methods, int count, int table)
{
    if ((type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && type->tp_version_tag == *version)
        return 1;
    for (int i = 0; i < count; i++)
        if (_PyType_Lookup(type, keys[i]) != methods[i]) /* assigns a tag when it can */
            return 0;
    if (table && !table_class_plain())
        return 0;
    if (!(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
    *version = type->tp_version_tag;
    return 1;
}

static inline int classes_as_imported(void)
{
    return class_as_imported(table_type, &table_version, table_method_keys, table_methods,
                             TABLE_METHODS, 1) &&
           class_as_imported(process_type, &process_version, process_method_keys,
                             process_methods, PROCESS_METHODS, 0);
}

/* Record a class's methods and version tag at import: 0, or -1 with an ImportError. */
static int record_class(PyTypeObject *type, unsigned int *version, const char *const *names,
                        PyObject **keys, PyObject **methods, int count)
{
    for (int i = 0; i < count; i++) {
        if ((keys[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return -1;
        PyObject *method = _PyType_Lookup(type, keys[i]);
        if (method == NULL) {
            PyErr_Format(PyExc_ImportError, "native_enrich: %s has no %s", type->tp_name,
                         names[i]);
            return -1;
        }
        methods[i] = Py_NewRef(method);
    }
    if (!(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        PyErr_Format(PyExc_ImportError, "native_enrich: %s has no version tag", type->tp_name);
        return -1;
    }
    *version = type->tp_version_tag;
    return 0;
}

/* ---- small helpers ---------------------------------------------------------------- */

/* An exact int within 64 bits: 1 and *out; 0 for anything else (no exception left). */
static int i64_of(PyObject *obj, int64_t *out)
{
    if (obj == NULL || !PyLong_CheckExact(obj))
        return 0;
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow)
        return 0;
    if (value == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = (int64_t)value;
    return 1;
}

/* None (*has = 0) or an exact 64-bit int (*has = 1): 0; anything else (unset too): -1. */
static int opt_i64(PyObject *obj, int *has, int64_t *out)
{
    if (obj == Py_None) {
        *has = 0;
        return 0;
    }
    *has = 1;
    return i64_of(obj, out) ? 0 : -1;
}


/* ---- time: ProcessTable.event_ms and enrich.iso_ms -------------------------------- */

static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const unsigned char *text, int count, int *value)
{
    int out = 0;
    for (int i = 0; i < count; i++) {
        if (text[i] < '0' || text[i] > '9')
            return 0;
        out = out * 10 + (text[i] - '0');
    }
    *value = out;
    return 1;
}

/* Seconds since the epoch of "YYYY-MM-DDTHH:MM:SS" (UTC), as
 * int(datetime.fromisoformat(head + "+00:00").timestamp()) gives for a valid one; 0 for
 * any other text (fromisoformat accepts more forms: those are left to Python). */
static int parse_head(const unsigned char *t, int64_t *seconds)
{
    int year, month, day, hour, minute, second;
    if (t[4] != '-' || t[7] != '-' || t[10] != 'T' || t[13] != ':' || t[16] != ':')
        return 0;
    if (!digits(t, 4, &year) || !digits(t + 5, 2, &month) || !digits(t + 8, 2, &day) ||
        !digits(t + 11, 2, &hour) || !digits(t + 14, 2, &minute) ||
        !digits(t + 17, 2, &second))
        return 0;
    static const int month_days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (year < 1 || month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59)
        return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    int last = month_days[month - 1] + (month == 2 && leap);
    if (day < 1 || day > last)
        return 0;
    *seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    return 1;
}

/* Event ms of years 1000..9999: iso_ms writes these with a 4-digit year (strftime's %Y
 * does not pad smaller years on glibc). */
#define ISO_MIN_SECONDS (-30610224000LL)  /* 1000-01-01T00:00:00 */
#define ISO_MAX_SECONDS (253402300799LL)  /* 9999-12-31T23:59:59 */

/* enrich.iso_ms(ms): "YYYY-MM-DDTHH:MM:SS.mmmZ"; NULL without exception when ms is out of
 * the years written here. */
static PyObject *iso_ms_text(int64_t ms)
{
    int64_t seconds = ms / 1000, millis = ms % 1000;
    if (millis < 0) {
        millis += 1000;
        seconds -= 1;
    }
    if (seconds < ISO_MIN_SECONDS || seconds > ISO_MAX_SECONDS)
        return NULL;
    int64_t days = seconds / 86400, in_day = seconds % 86400;
    if (in_day < 0) {
        in_day += 86400;
        days -= 1;
    }
    int64_t year;
    int month, day;
    civil_from_days(days, &year, &month, &day);
    int hour = (int)(in_day / 3600), minute = (int)(in_day / 60 % 60), second = (int)(in_day % 60);
    PyObject *text = PyUnicode_New(24, 127);
    if (text == NULL)
        return NULL;
    char *out = (char *)PyUnicode_DATA(text);
    int y = (int)year;
    out[0] = (char)('0' + y / 1000);
    out[1] = (char)('0' + y / 100 % 10);
    out[2] = (char)('0' + y / 10 % 10);
    out[3] = (char)('0' + y % 10);
    out[4] = '-';
    out[5] = (char)('0' + month / 10);
    out[6] = (char)('0' + month % 10);
    out[7] = '-';
    out[8] = (char)('0' + day / 10);
    out[9] = (char)('0' + day % 10);
    out[10] = 'T';
    out[11] = (char)('0' + hour / 10);
    out[12] = (char)('0' + hour % 10);
    out[13] = ':';
    out[14] = (char)('0' + minute / 10);
    out[15] = (char)('0' + minute % 10);
    out[16] = ':';
    out[17] = (char)('0' + second / 10);
    out[18] = (char)('0' + second % 10);
    out[19] = '.';
    out[20] = (char)('0' + millis / 100);
    out[21] = (char)('0' + millis / 10 % 10);
    out[22] = (char)('0' + millis % 10);
    out[23] = 'Z';
    return text;
}

/* What the table is read as: its instance dict and values from it (all strong: apply_ready
 * keeps one view for a batch, and event_time_commit puts the values it sets in it). */
typedef struct {
    PyObject *dict;
    PyObject *processes, *current, *stats, *config;
    PyObject *ts_last, *ts_last_ms, *ts_head, *last_ms;
    int64_t ts_base, last;
} Table;

static void table_release(Table *t)
{
    Py_CLEAR(t->dict);
    Py_CLEAR(t->processes);
    Py_CLEAR(t->current);
    Py_CLEAR(t->stats);
    Py_CLEAR(t->config);
    Py_CLEAR(t->ts_last);
    Py_CLEAR(t->ts_last_ms);
    Py_CLEAR(t->ts_head);
    Py_CLEAR(t->last_ms);
}

/* 0: the table is one the code here can read; -1: decline (no exception left). */
static int table_view(PyObject *table, Table *t)
{
    memset(t, 0, sizeof(*t));
    if (Py_TYPE(table) != table_type || !classes_as_imported())
        return -1;
    PyObject *dict = PyObject_GenericGetDict(table, NULL);
    if (dict == NULL) {
        PyErr_Clear();
        return -1;
    }
    t->dict = dict;
    if (!PyDict_CheckExact(dict))
        goto decline;
#define GET(field, key)                                                                   \
    if ((t->field = Py_XNewRef(PyDict_GetItemWithError(dict, key))) == NULL)              \
        goto decline;
    GET(processes, s_processes)
    GET(current, s_current)
    GET(stats, s_stats)
    GET(config, s_config)
    GET(ts_last, s_ts_last)
    GET(ts_last_ms, s_ts_last_ms)
    GET(ts_head, s_ts_head)
    GET(last_ms, s_last_ms)
#undef GET
    PyObject *ts_base = PyDict_GetItemWithError(dict, s_ts_base);
    if (!PyDict_CheckExact(t->processes) || !PyDict_CheckExact(t->current) ||
        Py_TYPE(t->stats) != stats_type || Py_TYPE(t->config) != config_type ||
        !PyUnicode_CheckExact(t->ts_head) || !i64_of(ts_base, &t->ts_base) ||
        !i64_of(t->last_ms, &t->last))
        goto decline;
    return 0;
decline:
    PyErr_Clear();
    table_release(t);
    return -1;
}

/* ProcessTable.event_ms(doc), decided without changing anything. */
typedef struct {
    enum { TIME_CACHED, TIME_BAD, TIME_PARSED } kind;
    int64_t ms;
    int new_head;    /* TIME_PARSED: the date part differs from _ts_head */
    int64_t base;    /* TIME_PARSED: _ts_base for it */
    int64_t bad;     /* TIME_BAD: stats.bad_times */
    PyObject *ts;    /* borrowed @timestamp */
} EventTime;

/* 0 decided (*et), -1 decline. */
static int event_time(Table *t, PyObject *doc, EventTime *et)
{
    PyObject *ts = PyDict_GetItemWithError(doc, s_timestamp);
    if (ts == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        ts = Py_None;
    }
    et->ts = ts;
    if (ts == t->ts_last) {
        et->kind = TIME_CACHED;
        return i64_of(t->ts_last_ms, &et->ms) ? 0 : -1;
    }
    if (!PyUnicode_Check(ts) || PyUnicode_GET_LENGTH(ts) < 20 ||
        PyUnicode_READ_CHAR(ts, PyUnicode_GET_LENGTH(ts) - 1) != 'Z') {
        if (PyUnicode_Check(ts) && !PyUnicode_CheckExact(ts))
            return -1; /* a str subclass: its endswith may be its own */
        et->kind = TIME_BAD;
        et->ms = t->last;
        return i64_of(slot(t->stats, stats_offsets[0]), &et->bad) && et->bad < INT64_MAX ? 0 : -1;
    }
    if (!PyUnicode_CheckExact(ts) || !PyUnicode_IS_ASCII(ts))
        return -1;
    const unsigned char *text = PyUnicode_1BYTE_DATA(ts);
    Py_ssize_t size = PyUnicode_GET_LENGTH(ts);
    et->kind = TIME_PARSED;
    et->new_head = !(PyUnicode_IS_ASCII(t->ts_head) && PyUnicode_GET_LENGTH(t->ts_head) == 19 &&
                     memcmp(PyUnicode_1BYTE_DATA(t->ts_head), text, 19) == 0);
    int64_t base = t->ts_base;
    if (et->new_head) {
        int64_t seconds;
        if (!parse_head(text, &seconds))
            return -1;
        base = seconds * 1000;
        et->base = base;
    }
    /* frac = ts[20:-1] if ts[19] == "." else ""; 3 digits, or int((frac + "00")[:3]) when
     * all digits, else 0 */
    int64_t part = 0;
    if (text[19] == '.') {
        Py_ssize_t frac = size - 21;
        int all_digits = frac > 0;
        for (Py_ssize_t i = 0; i < frac && all_digits; i++)
            all_digits = text[20 + i] >= '0' && text[20 + i] <= '9';
        if (all_digits) {
            for (Py_ssize_t i = 0; i < 3; i++)
                part = part * 10 + (i < frac ? text[20 + i] - '0' : 0);
        }
    }
    et->ms = base + part;
    return 0;
}

/* Make the event_ms decision happen: the same attribute changes as event_ms. */
static int event_time_commit(Table *t, EventTime *et)
{
    if (et->kind == TIME_CACHED)
        return 0;
    if (et->kind == TIME_BAD) {
        PyObject **counter = (PyObject **)((char *)t->stats + stats_offsets[0]);
        PyObject *bumped = PyLong_FromLongLong(et->bad + 1);
        if (bumped == NULL)
            return -1;
        Py_SETREF(*counter, bumped);
        return 0;
    }
    PyObject *dict = t->dict;
    if (et->new_head) {
        PyObject *head = PyUnicode_Substring(et->ts, 0, 19);
        PyObject *base = head != NULL ? PyLong_FromLongLong(et->base) : NULL;
        int failed = base == NULL || PyDict_SetItem(dict, s_ts_head, head) < 0 ||
                     PyDict_SetItem(dict, s_ts_base, base) < 0;
        Py_XDECREF(base);
        if (failed) {
            Py_XDECREF(head);
            return -1;
        }
        Py_SETREF(t->ts_head, head);
        t->ts_base = et->base;
    }
    PyObject *ms = PyLong_FromLongLong(et->ms);
    if (ms == NULL)
        return -1;
    int later = et->ms > t->last;
    int failed = (later && PyDict_SetItem(dict, s_last_ms, ms) < 0) ||
                 PyDict_SetItem(dict, s_ts_last, et->ts) < 0 ||
                 PyDict_SetItem(dict, s_ts_last_ms, ms) < 0;
    if (!failed) { /* the view as the dict now is */
        if (later) {
            Py_SETREF(t->last_ms, Py_NewRef(ms));
            t->last = et->ms;
        }
        Py_SETREF(t->ts_last, Py_NewRef(et->ts));
        Py_SETREF(t->ts_last_ms, Py_NewRef(ms));
    }
    Py_DECREF(ms);
    return failed ? -1 : 0;
}

/* ---- the table: get, lookup, former_parent, lineage ------------------------------- */

/* table.get(key): 0 with *out (borrowed, NULL = absent), -1 decline. */
static int table_get(Table *t, PyObject *key, PyObject **out)
{
    *out = NULL;
    if (key == NULL)
        return -1;
    if (key == Py_None)
        return 0;
    if (!PyTuple_CheckExact(key))
        return -1;
    PyObject *proc = PyDict_GetItemWithError(t->processes, key);
    if (proc == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        return 0;
    }
    if (Py_TYPE(proc) != process_type)
        return -1;
    *out = proc;
    return 0;
}

/* table.lookup(pid, at_ms): 0 with *out (borrowed, NULL = None), -1 decline. */
static int table_lookup(Table *t, PyObject *pid, int64_t at_ms, PyObject **out)
{
    *out = NULL;
    PyObject *key = PyDict_GetItemWithError(t->current, pid);
    if (key == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        return 0;
    }
    for (long i = 0; i < previous_chain_max; i++) {
        PyObject *proc;
        if (key == Py_None)
            return 0;
        if (table_get(t, key, &proc) < 0)
            return -1;
        if (proc == NULL)
            return 0;
        int has;
        int64_t when;
        if (opt_i64(pslot(proc, P_STARTED_AT), &has, &when) < 0)
            return -1;
        if (has && when > at_ms) {
            key = pslot(proc, P_PREVIOUS); /* the event predates this process */
            if (key == NULL)
                return -1;
            continue;
        }
        if (opt_i64(pslot(proc, P_EXITED_AT), &has, &when) < 0)
            return -1;
        if (has && at_ms > when)
            return 0;
        *out = proc;
        return 0;
    }
    return 0;
}

/* proc.pid == pid for an exact int pid: 1/0, -1 decline. */
static int pid_is(PyObject *proc, PyObject *pid)
{
    PyObject *own = pslot(proc, P_PID);
    if (own == NULL || !PyLong_CheckExact(own))
        return -1;
    int same = PyObject_RichCompareBool(own, pid, Py_EQ);
    if (same < 0) {
        PyErr_Clear();
        return -1;
    }
    return same;
}

/* enrich._resolve_parent: 0 with *out (borrowed or NULL), -1 decline. */
static int resolve_parent(Table *t, PyObject *proc, PyObject *ppid, int64_t at_ms,
                          PyObject **out)
{
    PyObject *known;
    if (table_get(t, pslot(proc, P_PARENT), &known) < 0)
        return -1;
    if (ppid == NULL) {
        *out = known;
        return 0;
    }
    if (known != NULL) {
        int same = pid_is(known, ppid);
        if (same < 0)
            return -1;
        if (same) {
            *out = known;
            return 0;
        }
    }
    static const int former_fields[2] = {P_CREATOR, P_REAPED_FROM};
    for (int i = 0; i < 2; i++) {
        PyObject *former;
        if (table_get(t, pslot(proc, former_fields[i]), &former) < 0)
            return -1;
        if (former != NULL) {
            int same = pid_is(former, ppid);
            if (same < 0)
                return -1;
            if (same) {
                *out = former;
                return 0;
            }
        }
    }
    return table_lookup(t, ppid, at_ms, out);
}

/* A process's key (pid, start_ms) as numbers: 0, or -1 decline. */
static int key_of(PyObject *proc, int64_t key[2])
{
    return i64_of(pslot(proc, P_PID), &key[0]) && i64_of(pslot(proc, P_START_MS), &key[1])
               ? 0
               : -1;
}

/* table.lineage(proc, depth): the count (<= LINEAGE_MAX) with the ancestors in out
 * (borrowed), -1 decline. */
static int lineage(Table *t, PyObject *proc, int64_t depth, PyObject **out)
{
    int64_t seen[LINEAGE_MAX + 1][2];
    if (key_of(proc, seen[0]) < 0)
        return -1;
    int count = 0;
    PyObject *node = proc;
    while (count < depth) {
        PyObject *up = NULL, *creator = pslot(node, P_CREATOR);
        if (creator == NULL)
            return -1;
        if (creator != Py_None && table_get(t, creator, &up) < 0)
            return -1;
        if (up == NULL) {
            PyObject *parent = pslot(node, P_PARENT);
            if (parent == NULL)
                return -1;
            if (parent != Py_None && table_get(t, parent, &up) < 0)
                return -1;
        }
        if (up == NULL)
            break;
        int64_t key[2];
        if (key_of(up, key) < 0)
            return -1;
        int known = 0;
        for (int i = 0; i <= count && !known; i++)
            known = seen[i][0] == key[0] && seen[i][1] == key[1];
        if (known)
            break;
        if (count == LINEAGE_MAX)
            return -1;
        out[count++] = up;
        seen[count][0] = key[0];
        seen[count][1] = key[1];
        node = up;
    }
    return count;
}

/* ---- enrich ----------------------------------------------------------------------- */

/* dict[key] = value when value is not None and key is absent (enrich._set_absent). */
static int set_absent(PyObject *target, PyObject *key, PyObject *value)
{
    if (value == Py_None)
        return 0;
    int has = PyDict_Contains(target, key);
    if (has < 0)
        return -1;
    return has ? 0 : PyDict_SetItem(target, key, value);
}

/* An int that isinstance(x, int) and not bool accepts: 1 exact int, 0 not an int (or a
 * bool), -1 an int subclass (declined). */
static int int_kind(PyObject *obj)
{
    if (obj == NULL)
        return 0;
    if (PyLong_CheckExact(obj))
        return 1;
    if (PyBool_Check(obj))
        return 0;
    return PyLong_Check(obj) ? -1 : 0;
}

/* Everything enrich_doc decides before it changes anything. */
typedef struct {
    PyObject *process;   /* the doc's process dict (strong) */
    PyObject *proc;      /* the Process (strong), NULL: not in the table */
    PyObject *start;     /* iso_ms(proc.started_at) (strong) or NULL */
    PyObject *section;   /* process["parent"] when a dict (strong), else NULL */
    PyObject *ppid;      /* the section's pid when an int (borrowed from section) */
    PyObject *parent;    /* the resolved parent (strong) or NULL */
    int write_ppid;      /* no parent, no ppid, proc.ppid truthy: section["pid"] = proc.ppid */
    int ancestors;
    PyObject *ancestry[LINEAGE_MAX]; /* strong */
    int fragments;       /* config.ancestry_fragments: the entries as Process.entry_fragment */
    PyObject *container; /* proc.container (ContainerRef, strong) or NULL */
} Plan;

static void plan_release(Plan *plan)
{
    Py_CLEAR(plan->process);
    Py_CLEAR(plan->proc);
    Py_CLEAR(plan->start);
    Py_CLEAR(plan->section);
    Py_CLEAR(plan->parent);
    for (int i = 0; i < plan->ancestors; i++)
        Py_CLEAR(plan->ancestry[i]);
    plan->ancestors = 0;
    Py_CLEAR(plan->container);
}

/* 1 plan made, 0 nothing to do after event_ms (or before it: *et untouched when
 * *timed is 0), -1 decline. */
static int plan_enrich(Table *t, PyObject *doc, EventTime *et, int *timed, Plan *plan)
{
    *timed = 0;
    PyObject *process = PyDict_GetItemWithError(doc, s_process);
    if (process == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyDict_CheckExact(process))
        return PyDict_Check(process) ? -1 : 0;
    PyObject *pid = PyDict_GetItemWithError(process, s_pid);
    if (pid == NULL && PyErr_Occurred())
        return -1;
    int kind = int_kind(pid);
    if (kind <= 0)
        return kind;
    if (event_time(t, doc, et) < 0)
        return -1;
    *timed = 1;
    PyObject *proc;
    if (table_lookup(t, pid, et->ms, &proc) < 0)
        return -1;
    if (proc == NULL)
        return 0;
    plan->process = Py_NewRef(process);
    plan->proc = Py_NewRef(proc);

    int has;
    int64_t started;
    if (opt_i64(pslot(proc, P_STARTED_AT), &has, &started) < 0)
        return -1;
    if (has && (plan->start = iso_ms_text(started)) == NULL)
        return -1;
    if (pslot(proc, P_ENTITY_ID) == NULL || pslot(proc, P_EXECUTABLE) == NULL ||
        pslot(proc, P_NAME) == NULL || pslot(proc, P_ARGS) == NULL)
        return -1;

    PyObject *section = PyDict_GetItemWithError(process, s_parent);
    if (section == NULL && PyErr_Occurred())
        return -1;
    PyObject *ppid = NULL;
    if (section != NULL && PyDict_CheckExact(section)) {
        plan->section = Py_NewRef(section);
        ppid = PyDict_GetItemWithError(section, s_pid);
        if (ppid == NULL && PyErr_Occurred())
            return -1;
        kind = int_kind(ppid);
        if (kind < 0)
            return -1;
        if (kind == 0)
            ppid = NULL;
    } else if (section != NULL && PyDict_Check(section)) {
        return -1;
    }
    plan->ppid = ppid;
    PyObject *parent;
    if (resolve_parent(t, proc, ppid, et->ms, &parent) < 0)
        return -1;
    if (parent != NULL) {
        plan->parent = Py_NewRef(parent);
        if (pslot(parent, P_PID) == NULL || pslot(parent, P_ENTITY_ID) == NULL ||
            pslot(parent, P_EXECUTABLE) == NULL || pslot(parent, P_NAME) == NULL ||
            pslot(parent, P_ARGS) == NULL)
            return -1;
    } else if (ppid == NULL) {
        int64_t own_ppid;
        if (!i64_of(pslot(proc, P_PPID), &own_ppid))
            return -1;
        plan->write_ppid = own_ppid != 0;
    }

    int64_t depth;
    if (!i64_of(slot(t->config, config_offsets[0]), &depth))
        return -1;
    plan->fragments = slot(t->config, config_offsets[CF_FRAGMENTS]) == Py_True;
    PyObject *found[LINEAGE_MAX];
    int count = lineage(t, proc, depth, found);
    if (count < 0)
        return -1;
    for (int i = 0; i < count; i++) {
        if (pslot(found[i], P_ANCESTRY_ENTRY) == NULL)
            return -1;
        plan->ancestry[plan->ancestors++] = Py_NewRef(found[i]);
    }

    PyObject *container = pslot(proc, P_CONTAINER);
    if (container == NULL)
        return -1;
    if (container != Py_None) {
        if (Py_TYPE(container) != container_type ||
            slot(container, container_offsets[CR_ID]) == NULL ||
            slot(container, container_offsets[CR_RUNTIME]) == NULL)
            return -1;
        PyObject *existing = PyDict_GetItemWithError(doc, s_container);
        if (existing == NULL && PyErr_Occurred())
            return -1;
        if (existing != NULL && !PyDict_CheckExact(existing) && PyDict_Check(existing))
            return -1;
        plan->container = Py_NewRef(container);
    }
    return 1;
}

/* enrich_doc's last step: the doc's container.id and .runtime, where absent. 0, or -1. */
static int apply_container(PyObject *doc, Plan *plan)
{
    if (plan->container == NULL)
        return 0;
    PyObject *container = PyDict_GetItemWithError(doc, s_container);
    if (container == NULL && PyErr_Occurred())
        return -1;
    if (container == NULL || !PyDict_Check(container)) {
        container = PyDict_New();
        int failed = container == NULL || PyDict_SetItem(doc, s_container, container) < 0;
        Py_XDECREF(container); /* the doc holds it */
        if (failed)
            return -1;
    }
    PyObject *ref = plan->container;
    if (PyDict_SetDefault(container, s_id, slot(ref, container_offsets[CR_ID])) == NULL)
        return -1;
    PyObject *runtime = slot(ref, container_offsets[CR_RUNTIME]);
    if (runtime != Py_None && PyDict_SetDefault(container, s_runtime, runtime) == NULL)
        return -1;
    return 0;
}

/* An ancestor's ancestry element as kept on it (borrowed), or NULL when Python must make it:
 * Process.entry_fragment's kept text while it is of the entry kept, or Process.entry's. */
static PyObject *cached_entry(const Plan *plan, PyObject *anc)
{
    PyObject *entry = pslot(anc, P_ANCESTRY_ENTRY);
    if (entry == NULL || entry == Py_None)
        return NULL;
    if (!plan->fragments)
        return entry;
    PyObject *text = pslot(anc, P_ANCESTRY_FRAGMENT);
    return pslot(anc, P_FRAGMENT_OF) == entry && text != NULL && text != Py_None ? text : NULL;
}

/* The doc changes of enrich_doc, in its order. 0, or -1 with an exception. */
static int apply_enrich(PyObject *doc, Plan *plan)
{
    PyObject *process = plan->process, *proc = plan->proc;
    if (PyDict_SetItem(process, s_entity_id, pslot(proc, P_ENTITY_ID)) < 0)
        return -1;
    if (plan->start != NULL && PyDict_SetItem(process, s_start, plan->start) < 0)
        return -1;
    if (set_absent(process, s_executable, pslot(proc, P_EXECUTABLE)) < 0 ||
        set_absent(process, s_name, pslot(proc, P_NAME)) < 0 ||
        set_absent(process, s_args, pslot(proc, P_ARGS)) < 0)
        return -1;

    PyObject *section = plan->section != NULL ? Py_NewRef(plan->section) : PyDict_New();
    if (section == NULL)
        return -1;
    PyObject *parent = plan->parent;
    int failed = 0;
    if (parent != NULL) {
        failed = set_absent(section, s_pid, pslot(parent, P_PID)) < 0 ||
                 PyDict_SetItem(section, s_entity_id, pslot(parent, P_ENTITY_ID)) < 0 ||
                 set_absent(section, s_executable, pslot(parent, P_EXECUTABLE)) < 0 ||
                 set_absent(section, s_name, pslot(parent, P_NAME)) < 0 ||
                 set_absent(section, s_args, pslot(parent, P_ARGS)) < 0;
    } else if (plan->write_ppid) {
        failed = PyDict_SetItem(section, s_pid, pslot(proc, P_PPID)) < 0;
    }
    if (!failed && PyDict_GET_SIZE(section) > 0)
        failed = PyDict_SetItem(process, s_parent, section) < 0;
    Py_DECREF(section);
    if (failed)
        return -1;

    if (plan->ancestors > 0) {
        PyObject *ancestry = PyList_New(plan->ancestors);
        if (ancestry == NULL)
            return -1;
        for (int i = 0; i < plan->ancestors; i++) {
            PyObject *anc = plan->ancestry[i];
            PyObject *entry = cached_entry(plan, anc);
            if (entry != NULL)
                Py_INCREF(entry);
            else /* a cache miss: Process.entry_fragment() or .entry() in Python */
                entry = PyObject_CallMethodNoArgs(anc, plan->fragments ? s_entry_fragment : s_entry);
            if (entry == NULL) {
                Py_DECREF(ancestry);
                return -1;
            }
            PyList_SET_ITEM(ancestry, i, entry);
        }
        failed = PyDict_SetItem(process, s_ancestry, ancestry) < 0;
        Py_DECREF(ancestry);
        if (failed)
            return -1;
    }

    return apply_container(doc, plan);
}

#include "enrich_memo.h"

/* enrich(table, doc) with the table's view t (an exact dict doc), through memo if given. */
static PyObject *enrich_with_memo(Table *t, PyObject *doc, EnrichMemo *memo)
{
    EventTime et;
    Plan plan;
    memset(&plan, 0, sizeof(plan));
    int timed = 0;
    int planned = plan_enrich(t, doc, &et, &timed, &plan);
    if (planned < 0) {
        PyErr_Clear();
        plan_release(&plan);
        Py_RETURN_FALSE;
    }
    int failed = timed && event_time_commit(t, &et) < 0;
    if (!failed && planned > 0)
        failed = (memo ? apply_enrich_memo(doc, &plan, memo) : apply_enrich(doc, &plan)) < 0;
    plan_release(&plan);
    if (failed)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *enrich_with(Table *t, PyObject *doc)
{
    return enrich_with_memo(t, doc, NULL);
}

/* step(view, table, doc) for a Python call (table, doc): False for a doc that is no exact
 * dict or a table without a view, as the step declines. */
static PyObject *with_table_view(const char *usage, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *(*step)(Table *, PyObject *, PyObject *))
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    PyObject *table = args[0], *doc = args[1];
    if (!PyDict_CheckExact(doc))
        Py_RETURN_FALSE;
    Table t;
    if (table_view(table, &t) < 0)
        Py_RETURN_FALSE;
    PyObject *done = step(&t, table, doc);
    table_release(&t);
    return done;
}

static PyObject *enrich_step(Table *t, PyObject *table, PyObject *doc)
{
    return enrich_with(t, doc);
}

static PyObject *py_enrich(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return with_table_view("enrich(table, doc)", args, nargs, enrich_step);
}

/* ---- observe ------------------------------------------------------------------------ */

/* tree._pid(value) for what the doc holds: 1 *out = the pid, 0 not a pid, -1 decline. */
static int doc_pid(PyObject *value, int64_t *out)
{
    int kind = int_kind(value);
    if (kind <= 0)
        return kind;
    if (!i64_of(value, out) || *out < 0 || *out >= ((int64_t)1 << 32))
        return 0;
    return 1;
}

/* A section of the doc (tree._section): 0 with *out (borrowed, NULL = {}), -1 decline. */
static int section_of(PyObject *parent, PyObject *key, PyObject **out)
{
    *out = NULL;
    if (parent == NULL)
        return 0;
    PyObject *value = PyDict_GetItemWithError(parent, key);
    if (value == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (PyDict_CheckExact(value)) {
        *out = value;
        return 0;
    }
    return PyDict_Check(value) ? -1 : 0;
}

/* What _take_image(proc, process, at_ms, with_args=False) would do to an inferred process:
 * 0 nothing (the event names no executable), 1 only image_ms and the cached ancestry entry
 * (the same executable, and no other name or working directory), -1 more (or a str
 * subclass, which _str() accepts and the comparisons here would not mirror): Python. */
static int inferred_image_change(PyObject *process, PyObject *proc)
{
    PyObject *exe = PyDict_GetItemWithError(process, s_executable);
    if (exe == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyUnicode_Check(exe))
        return 0; /* _str(): None, and _take_image returns at once */
    if (!PyUnicode_CheckExact(exe))
        return -1;
    PyObject *own = pslot(proc, P_EXECUTABLE);
    if (own == NULL || !PyUnicode_CheckExact(own) || PyUnicode_Compare(exe, own) != 0)
        return -1; /* a new image: title, args */
    /* proc.name = _str(name) or proc.name; proc.cwd = cwd if it is a str */
    PyObject *const keys[2] = {s_name, s_working_directory};
    const int fields[2] = {P_NAME, P_CWD};
    for (int i = 0; i < 2; i++) {
        PyObject *value = PyDict_GetItemWithError(process, keys[i]);
        if (value == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        if (!PyUnicode_Check(value) || (i == 0 && PyUnicode_GET_LENGTH(value) == 0))
            continue; /* not a str, or an empty name: the process keeps its own */
        PyObject *mine = pslot(proc, fields[i]);
        if (!PyUnicode_CheckExact(value) || mine == NULL || !PyUnicode_CheckExact(mine) ||
            PyUnicode_Compare(value, mine) != 0)
            return -1;
    }
    return 1;
}

#include "enrich_lifecycle.h"
#include "enrich_fork.h"
#include "enrich_exit.h"
#include "enrich_exec.h"

enum { LIFECYCLE_FORK = 1, LIFECYCLE_EXIT, LIFECYCLE_EXIT_GROUP, LIFECYCLE_EXEC };

/* 1: _observe's preamble changes only event_ms's state (commit *et when *timed) and, for a
 * placeholder seen again (*touched), its image_ms and cached ancestry entry; its actor is
 * *actor (borrowed), *lifecycle says whether the syscall (*syscall_out) is a fork, exec or
 * exit (else _observe returns [] at that point); 0 with !*timed: it returns [] before
 * event_ms; -1: decline. */
static int plan_observe(Table *t, PyObject *doc, EventTime *et, int *timed, PyObject **touched,
                        PyObject **actor, int *lifecycle, PyObject **syscall_out)
{
    *syscall_out = NULL;
    *timed = 0;
    *touched = NULL;
    *actor = NULL;
    *lifecycle = 0;
    PyObject *process, *parent_section, *auditd, *data;
    if (section_of(doc, s_process, &process) < 0)
        return -1;
    PyObject *pid_obj = process != NULL ? PyDict_GetItemWithError(process, s_pid) : NULL;
    if (pid_obj == NULL && PyErr_Occurred())
        return -1;
    int64_t pid, ppid = 0;
    int kind = doc_pid(pid_obj, &pid);
    if (kind < 0)
        return -1;
    if (kind == 0 || pid <= 0)
        return 0;
    if (event_time(t, doc, et) < 0)
        return -1;
    *timed = 1;
    if (section_of(process, s_parent, &parent_section) < 0)
        return -1;
    PyObject *ppid_obj =
        parent_section != NULL ? PyDict_GetItemWithError(parent_section, s_pid) : NULL;
    if (ppid_obj == NULL && PyErr_Occurred())
        return -1;
    int has_ppid = doc_pid(ppid_obj, &ppid);
    if (has_ppid < 0)
        return -1;
    if (section_of(doc, s_auditd, &auditd) < 0 || section_of(auditd, s_data, &data) < 0)
        return -1;
    PyObject *syscall = data != NULL ? PyDict_GetItemWithError(data, s_syscall) : NULL;
    if (syscall == NULL) {
        if (PyErr_Occurred())
            return -1;
    } else if (syscall != Py_None) {
        if (!PyUnicode_CheckExact(syscall))
            return -1;
        int forks = PySet_Contains(fork_syscalls, syscall);
        int execs = forks == 0 ? PySet_Contains(exec_syscalls, syscall) : 0;
        if (forks < 0 || execs < 0)
            return -1;
        /* a fork, exec or exit: enrich_fork.h, enrich_exec.h or enrich_exit.h, else the
         * caller's _act */
        *lifecycle = forks                                          ? LIFECYCLE_FORK
                     : execs                                        ? LIFECYCLE_EXEC
                     : PyUnicode_Compare(syscall, s_exit) == 0       ? LIFECYCLE_EXIT
                     : PyUnicode_Compare(syscall, s_exit_group) == 0 ? LIFECYCLE_EXIT_GROUP
                                                                     : 0;
        *syscall_out = syscall;
    }
    /* _actor: a known process, no change */
    PyObject *proc;
    if (table_lookup(t, pid_obj, et->ms, &proc) < 0 || proc == NULL)
        return -1;
    if (pslot(proc, P_TENTATIVE) != Py_False)
        return -1;
    int64_t own_ppid, image_ms;
    if (has_ppid && (!i64_of(pslot(proc, P_PPID), &own_ppid) || own_ppid != ppid))
        return -1;
    /* proc.executable is None or (at_ms >= proc.image_ms and proc.inferred): _take_image */
    PyObject *executable = pslot(proc, P_EXECUTABLE), *inferred = pslot(proc, P_INFERRED);
    if (executable == NULL || executable == Py_None || !i64_of(pslot(proc, P_IMAGE_MS), &image_ms))
        return -1;
    if (et->ms >= image_ms && inferred != Py_False) {
        if (inferred != Py_True)
            return -1;
        int change = inferred_image_change(process, proc);
        if (change < 0)
            return -1;
        if (change > 0)
            *touched = proc; /* a placeholder seen again with the image it had */
    }
    *actor = proc;
    return 1;
}

/* observe(table, doc) with the table's view *t (an exact dict doc). */
static PyObject *observe_with(Table *t, PyObject *table, PyObject *doc)
{
    EventTime et;
    int timed = 0, lifecycle = 0;
    PyObject *touched = NULL, *actor = NULL, *syscall;
    int planned = plan_observe(t, doc, &et, &timed, &touched, &actor, &lifecycle, &syscall);
    if (planned < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    PyObject *result = NULL;
    ForkPlan fork;
    ExitPlan exit_plan = {0};
    int forking = lifecycle == LIFECYCLE_FORK &&
                  plan_fork(t, table, doc, syscall, actor, et.ms, &fork) > 0;
    int exiting = (lifecycle == LIFECYCLE_EXIT || lifecycle == LIFECYCLE_EXIT_GROUP) &&
                  plan_exit(t, doc, lifecycle == LIFECYCLE_EXIT_GROUP, actor, et.ms,
                            &exit_plan) > 0;
    ExecPlan exec_plan = {0};
    int execing = lifecycle == LIFECYCLE_EXEC && plan_exec(t, doc, actor, et.ms, &exec_plan) > 0;
    PyErr_Clear(); /* a plan declines without an exception; none may be left either way */
    if (lifecycle && !forking && !exiting && !execing) { /* built first: no change on failure */
        PyObject *at = PyLong_FromLongLong(et.ms);
        result = at != NULL ? PyTuple_Pack(2, actor, at) : NULL;
        Py_XDECREF(at);
        if (result == NULL) {
            PyErr_Clear();
            Py_RETURN_FALSE;
        }
    }
    Py_XINCREF(touched);
    int failed = timed && event_time_commit(t, &et) < 0;
    if (!failed && touched != NULL) {
        /* _take_image's changes when the image stayed: image_ms, and the cached entry */
        PyObject *at = PyLong_FromLongLong(et.ms);
        if (at == NULL) {
            failed = 1;
        } else {
            pslot_set(touched, P_IMAGE_MS, at);
            Py_INCREF(Py_None);
            pslot_set(touched, P_ANCESTRY_ENTRY, Py_None);
        }
    }
    if (!failed && forking)
        failed = (result = do_fork(t, &fork)) == NULL;
    if (!failed && exiting)
        failed = (result = do_exit(t, table, &exit_plan)) == NULL;
    if (!failed && execing)
        failed = (result = do_exec(t, table, &exec_plan)) == NULL;
    exit_plan_release(&exit_plan);
    exec_plan_release(&exec_plan);
    Py_XDECREF(touched);
    if (failed) {
        Py_XDECREF(result);
        return NULL;
    }
    if (result != NULL)
        return result;
    Py_RETURN_TRUE;
}

static PyObject *py_observe(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return with_table_view("observe(table, doc)", args, nargs, observe_with);
}

/* entity_id(host, pid, start_ms) -> str: tree.entity_id as the code here makes it. */
static PyObject *py_entity_id(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t pid, start_ms;
    if (nargs != 3 || !PyUnicode_Check(args[0]) || !i64_of(args[1], &pid) ||
        !i64_of(args[2], &start_ms)) {
        PyErr_SetString(PyExc_TypeError, "entity_id(host: str, pid: int, start_ms: int)");
        return NULL;
    }
    return entity_id_text(args[0], pid, start_ms);
}

/* iso_ms(ms) -> str | None: enrich.iso_ms as the code here writes it (None: not here). */
static PyObject *py_iso_ms(PyObject *self, PyObject *arg)
{
    int64_t ms;
    if (!i64_of(arg, &ms))
        Py_RETURN_NONE;
    PyObject *text = iso_ms_text(ms);
    if (text == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return text;
}

/* ---- module ----------------------------------------------------------------------------- */

static int load_python_side(void)
{
#define INTERN_STRING(var, text)                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                 \
        return -1;
    STRING_LIST(INTERN_STRING)
#undef INTERN_STRING
    process_type = import_type("treekeeper.tree", "Process");
    table_type = import_type("treekeeper.tree", "ProcessTable");
    stats_type = import_type("treekeeper.tree", "TreeStats");
    config_type = import_type("treekeeper.tree", "TableConfig");
    container_type = import_type("treekeeper.containers", "ContainerRef");
    fork_syscalls = import_attr("treekeeper.tree", "FORK_SYSCALLS");
    exec_syscalls = import_attr("treekeeper.tree", "EXEC_SYSCALLS");
    PyObject *chain = import_attr("treekeeper.tree", "PREVIOUS_CHAIN_MAX");
    PyObject *role = import_attr("treekeeper.containers", "RuntimeRole");
    PyObject *pid_ns = import_attr("treekeeper.namespaces", "PidNs");
    if (role == NULL || pid_ns == NULL ||
        (role_none = PyObject_GetAttrString(role, "NONE")) == NULL ||
        (role_runtime_init = PyObject_GetAttrString(role, "RUNTIME_INIT")) == NULL ||
        (role_shim = PyObject_GetAttrString(role, "SHIM")) == NULL ||
        (role_runtime = PyObject_GetAttrString(role, "RUNTIME")) == NULL ||
        (containers_module = PyImport_ImportModule("treekeeper.containers")) == NULL ||
        (classify_imported = PyObject_GetAttrString(containers_module, "classify")) == NULL ||
        (pidns_unknown = PyObject_GetAttrString(pid_ns, "UNKNOWN")) == NULL ||
        (pidns_host = PyObject_GetAttrString(pid_ns, "HOST")) == NULL ||
        (pidns_nested = PyObject_GetAttrString(pid_ns, "NESTED")) == NULL) {
        Py_XDECREF(role);
        Py_XDECREF(pid_ns);
        Py_XDECREF(chain);
        return -1;
    }
    Py_DECREF(role);
    Py_DECREF(pid_ns);
    one = PyLong_FromLong(1);
    heappush = import_attr("heapq", "heappush");
    if (heappush == NULL) {
        Py_XDECREF(chain);
        return -1;
    }
    /* Interned: Process.__init__ then matches each keyword by identity, not by value. */
    static const char *const fork_keywords[] = {
        "pid", "start_ms", "entity_id", "creator", "executable", "name", "args", "cwd",
        "title", "started_at", "first_seen", "image_ms", "tentative", "role", "managed",
        "pid_ns"};
    const Py_ssize_t keyword_count = (Py_ssize_t)(sizeof fork_keywords / sizeof *fork_keywords);
    fork_kwnames = PyTuple_New(keyword_count);
    for (Py_ssize_t i = 0; fork_kwnames != NULL && i < keyword_count; i++) {
        PyObject *name = PyUnicode_InternFromString(fork_keywords[i]);
        if (name == NULL)
            Py_CLEAR(fork_kwnames);
        else
            PyTuple_SET_ITEM(fork_kwnames, i, name);
    }
    if (one == NULL || fork_kwnames == NULL) {
        Py_XDECREF(chain);
        return -1;
    }
    if (!process_type || !table_type || !stats_type || !config_type || !container_type ||
        !fork_syscalls || !exec_syscalls || !chain) {
        Py_XDECREF(chain);
        return -1;
    }
    previous_chain_max = PyLong_AsLong(chain);
    Py_DECREF(chain);
    if (previous_chain_max == -1 && PyErr_Occurred())
        return -1;
    if (!PyFrozenSet_CheckExact(fork_syscalls) || !PyFrozenSet_CheckExact(exec_syscalls)) {
        PyErr_SetString(PyExc_ImportError, "native_enrich: the syscall sets are not frozensets");
        return -1;
    }
    if (slot_offsets(process_type, process_names, process_offsets, P_COUNT) < 0 ||
        slot_offsets(stats_type, stats_names, stats_offsets, ST_COUNT) < 0 ||
        slot_offsets(config_type, config_names, config_offsets, CF_COUNT) < 0 ||
        slot_offsets(container_type, container_names, container_offsets, CR_COUNT) < 0)
        return -1;
    PyObject *const table_attrs[TABLE_ATTRS] = {
        s_processes, s_current,   s_stats,      s_config,      s_last_ms, s_ts_head,
        s_ts_base,   s_ts_last,   s_ts_last_ms, s_proc_source, s_exited};
    for (int i = 0; i < TABLE_ATTRS; i++)
        table_attr_keys[i] = table_attrs[i];
    if (!table_class_plain()) {
        PyErr_SetString(PyExc_ImportError,
                        "native_enrich: ProcessTable defines an attribute read from its "
                        "instances' dict, or its own attribute access");
        return -1;
    }
    if (record_class(table_type, &table_version, table_method_names, table_method_keys,
                     table_methods, TABLE_METHODS) < 0 ||
        record_class(process_type, &process_version, process_method_names,
                     process_method_keys, process_methods, PROCESS_METHODS) < 0)
        return -1;
    return 0;
}

#include "enrich_apply.h"

/* plain_image(executable, args) -> bool, for tests/test_native_classify.py. */
static PyObject *py_plain_image(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "plain_image(executable, args)");
        return NULL;
    }
    int plain = plain_image(args[0], args[1]);
    return plain < 0 ? NULL : PyBool_FromLong(plain);
}

static PyMethodDef methods[] = {
    {"plain_image", (PyCFunction)(void (*)(void))py_plain_image, METH_FASTCALL,
     "plain_image(executable, args) -> bool: True where containers.classify's answer is "
     "(RuntimeRole.NONE, None) without calling it (enrich_exec.h)."},
    {"apply_ready", (PyCFunction)(void (*)(void))py_apply_ready, METH_FASTCALL,
     "apply_ready(step, table, ready, out, live_container) -> None: TreeStep._apply's loop "
     "(treekeeper/csrc/enrich_apply.h)."},
    {"enrich", (PyCFunction)(void (*)(void))py_enrich, METH_FASTCALL,
     "enrich(table, doc) -> bool: treekeeper.enrich.enrich_doc done here (True), or nothing "
     "done and left to Python (False)."},
    {"observe", (PyCFunction)(void (*)(void))py_observe, METH_FASTCALL,
     "observe(table, doc) -> True | False | list | (actor, at_ms): ProcessTable._observe's "
     "preamble done here for a known process; True: nothing more to do; a list: a fork, exec "
     "or exit done here, its lifecycle docs; (actor, at_ms): one for _act; False: nothing "
     "done, left to Python."},
    {"lifecycle_doc", (PyCFunction)(void (*)(void))py_lifecycle_doc, METH_FASTCALL,
     "lifecycle_doc(table, action, proc, at_ms) -> dict: treekeeper.enrich.lifecycle_doc, "
     "made here or (where the code here declines) by calling it."},
    {"entity_id", (PyCFunction)(void (*)(void))py_entity_id, METH_FASTCALL,
     "entity_id(host, pid, start_ms) -> str: treekeeper.tree.entity_id, computed here."},
    {"iso_ms", py_iso_ms, METH_O,
     "iso_ms(ms) -> str | None: treekeeper.enrich.iso_ms, None where not done here."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "native_enrich",
    "treekeeper.enrich.enrich_doc in C (see treekeeper/native.py).", -1, methods};

static int loaded;

PyMODINIT_FUNC PyInit_native_enrich(void)
{
    /* Importing treekeeper.tree may load this module again (its last line): once is enough. */
    if (!loaded) {
        if (load_python_side() < 0 || apply_ready_init() < 0)
            return NULL;
        loaded = 1;
    }
    return PyModule_Create(&module);
}
