/*
 * assembler.native_runs: assembler/batch.py's push_items() in C, with Reassembler.push_run's
 * commonest case done here.
 *
 * Reference (the Python stays THE reference): assembler/batch.py (push_items) and
 * assembler/reassembler.py (Reassembler.push_run, _NodeSerials.unwrap). push_items(items,
 * reassembler, clock_ms, event_time, on_unparsed) -> (clock_ms, last record) pushes parse_batch's
 * items as the Python function does. A run that is a whole event, as the kernel sends most of
 * them, is completed here: two records or more ending in EOE, its key neither open nor
 * completed recently, its node known, its serial within 2^12 of the node's newest (no stray
 * waiting to be judged when it moves the newest on), room for one more open event. Its
 * serial's frontier step is taken here when the event is the next in order and nothing is
 * pending or alone, as push_run does. A record alone whose event is open (the records of
 * events that interleave, as in a replayed log's) is appended here, and an EOE completes
 * its event as push and _finish do. Every other item goes to the Python methods (push,
 * push_run, the reassembler's _note_completed), after every check and before any change, so
 * the state is always what the Python function leaves. Ints beyond 2^62 (clocks, serial
 * spaces) hand the rest of the batch to the Python function.
 *
 * Why: the Python loop, push_run and unwrap were ~2 µs of the ~10 µs an event costs the
 * assembler (docs/performance.md, twenty-ninth pass).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#define PYCLASS_MODULE "native_runs"
#include "pyclass.h"
#include "recent_keys.h"
#include <stdint.h>

#define EOE_TYPE 1320
#define LOGIN_TYPE 1006  /* reassembler.completes_alone: the bounds and exceptions */
#define KERNEL_TYPE 2000
#define SERIAL_MASK 0xffffffffLL
#define SERIAL_HALF 0x80000000LL
#define BACKWARD_JUMP 4096 /* reassembler.BACKWARD_JUMP: the unwrap's near case */
#define FITS (1LL << 62)   /* larger ints go to the Python function */

static PyTypeObject *record_type, *node_type, *open_type, *recent_type;
static PyObject *python_push_items, *reason_eoe;

enum { R_TYPE, R_NODE, R_SEC, R_MSEC, R_SERIAL, R_COUNT };
static const char *const record_names[R_COUNT] = {"type", "node", "sec", "msec", "serial"};
static Py_ssize_t record_offsets[R_COUNT];

enum { N_STRIDE, N_LAST_SEEN, N_CANDIDATE, N_FRONTIER, N_PENDING, N_ALONE, N_COUNT };
static const char *const node_names[N_COUNT] = {"stride",   "last_seen", "candidate",
                                                "frontier", "pending",   "alone"};
static Py_ssize_t node_offsets[N_COUNT];

enum { O_RECORDS, O_UNWRAPPED, O_COUNT };
static const char *const open_names[O_COUNT] = {"records", "unwrapped"};
static Py_ssize_t open_offsets[O_COUNT];

static PyObject *s_open, *s_recent, *s_nodes, *s_stats, *s_on_complete, *s_clock, *s_push,
    *s_push_run, *s_note_completed, *s_max_records, *s_max_in_flight, *s_records, *s_events;

/* The reassembler's parts, read once per call. */
typedef struct {
    PyObject *self, *open, *nodes, *stats, *on_complete, *push, *push_run,
        *note_completed; /* owned */
    RecentKeys *recent; /* owned */
    Py_ssize_t max_records, max_in_flight;
    long long clock;           /* the reassembler's _clock as last read or written */
    Py_ssize_t records, whole; /* stats.records and stats.events[EOE] not yet added */
} Parts;

static void parts_clear(Parts *p)
{
    Py_CLEAR(p->open);
    Py_CLEAR(p->recent);
    Py_CLEAR(p->nodes);
    Py_CLEAR(p->stats);
    Py_CLEAR(p->on_complete);
    Py_CLEAR(p->push);
    Py_CLEAR(p->push_run);
    Py_CLEAR(p->note_completed);
}

/* A Python int as a C one in [-FITS, FITS]; 0 when it is not an int or out of range. */
static int small(PyObject *value, long long *out)
{
    if (value == NULL || !PyLong_CheckExact(value))
        return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || v > FITS || v < -FITS)
        return 0;
    *out = v;
    return 1;
}

static int size_attr(PyObject *obj, PyObject *name, Py_ssize_t *out)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* 1 read, 0 the reassembler is not one this code knows (the Python function runs), -1 error. */
static int parts_read(PyObject *reassembler, Parts *p)
{
    memset(p, 0, sizeof *p);
    p->self = reassembler;
    if ((p->open = PyObject_GetAttr(reassembler, s_open)) == NULL ||
        (p->recent = (RecentKeys *)PyObject_GetAttr(reassembler, s_recent)) == NULL ||
        (p->nodes = PyObject_GetAttr(reassembler, s_nodes)) == NULL ||
        (p->stats = PyObject_GetAttr(reassembler, s_stats)) == NULL ||
        (p->on_complete = PyObject_GetAttr(reassembler, s_on_complete)) == NULL ||
        (p->push = PyObject_GetAttr(reassembler, s_push)) == NULL ||
        (p->push_run = PyObject_GetAttr(reassembler, s_push_run)) == NULL ||
        (p->note_completed = PyObject_GetAttr(reassembler, s_note_completed)) == NULL ||
        size_attr(reassembler, s_max_records, &p->max_records) < 0 ||
        size_attr(reassembler, s_max_in_flight, &p->max_in_flight) < 0)
        return -1;
    PyObject *clock = PyObject_GetAttr(reassembler, s_clock);
    int known = clock != NULL && small(clock, &p->clock);
    Py_XDECREF(clock);
    if (clock == NULL)
        return -1;
    /* _open is an OrderedDict (a dict subclass: lookups and sizes are the dict's; insertions
     * go through PyObject_SetItem, which keeps the order); _recent the C RecentKeys (not the
     * Python one: AUDITSTREAM_NATIVE=0 loads neither). */
    return known && PyDict_Check(p->open) && Py_IS_TYPE((PyObject *)p->recent, recent_type) &&
           p->recent->keys != NULL && PyDict_CheckExact(p->nodes);
}

/* stats.records and stats.events[EOE] += what was counted here; -1 error. */
static int parts_flush(Parts *p)
{
    int rc = p->records ? add_to_attr(p->stats, s_records, p->records) : 0;
    p->records = 0;
    if (rc == 0 && p->whole) {
        PyObject *events = PyObject_GetAttr(p->stats, s_events);
        rc = events ? add_to_item(events, reason_eoe, p->whole) : -1;
        Py_XDECREF(events);
    }
    p->whole = 0;
    return rc;
}

/* push_run's `if now_ms > self._clock: self._clock = now_ms`. */
static int move_clock(Parts *p, long long now)
{
    if (now <= p->clock)
        return 0;
    PyObject *value = PyLong_FromLongLong(now);
    int rc = value ? PyObject_SetAttr(p->self, s_clock, value) : -1;
    Py_XDECREF(value);
    if (rc == 0)
        p->clock = now;
    return rc;
}

static void set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    Py_XSETREF(*(PyObject **)((char *)obj + offset), value);
}

static int record_type_is(PyObject *rec, long type)
{
    long long value;
    return small(slot(rec, record_offsets[R_TYPE]), &value) && value == type;
}

/* The key (node, sec, msec, serial) of a record, as the reassembler's dicts hold it: 1 with
 * *key new and *name borrowed, 0 when its slots are not those of a plain record (the Python
 * methods cope), -1 error. */
static int key_of(PyObject *rec, PyObject **key, PyObject **name)
{
    PyObject *node = slot(rec, record_offsets[R_NODE]), *sec = slot(rec, record_offsets[R_SEC]),
             *msec = slot(rec, record_offsets[R_MSEC]),
             *serial = slot(rec, record_offsets[R_SERIAL]);
    if (node == NULL || sec == NULL || msec == NULL || serial == NULL ||
        !PyUnicode_CheckExact(node))
        return 0;
    *name = node;
    *key = PyTuple_Pack(4, node, sec, msec, serial);
    return *key != NULL ? 1 : -1;
}

/* _done's hand-over after the event is out of _open and in _recent: count it (EOE), call
 * on_complete(records, EOE), then the frontier step of an event next in order (push_run's
 * inlined case), else _note_completed(node, name, unwrapped). ``node``: borrowed from
 * _nodes; ``unwrapped_obj``: the event's own int when the caller has one (else made here).
 * 1 done, -1 error. */
static int completed(Parts *p, PyObject *records, PyObject *node, PyObject *name,
                     PyObject *unwrapped_obj, long long unwrapped)
{
    p->whole++;
    PyObject *args[2] = {records, reason_eoe};
    Py_INCREF(node); /* the callback runs Python code */
    PyObject *result = PyObject_Vectorcall(p->on_complete, args, 2, NULL);
    if (result == NULL) {
        Py_DECREF(node);
        return -1;
    }
    Py_DECREF(result);
    int rc = 1;
    long long frontier;
    PyObject *pending = slot(node, node_offsets[N_PENDING]), *alone = slot(node, node_offsets[N_ALONE]);
    if (small(slot(node, node_offsets[N_FRONTIER]), &frontier) && frontier == unwrapped &&
        pending != NULL && PyList_CheckExact(pending) && PyList_GET_SIZE(pending) == 0 &&
        alone != NULL && PyDict_CheckExact(alone) && PyDict_GET_SIZE(alone) == 0) {
        PyObject *next = PyLong_FromLongLong(unwrapped + 1);
        if (next == NULL)
            rc = -1;
        else
            set_slot(node, node_offsets[N_FRONTIER], next);
    } else {
        PyObject *made = unwrapped_obj ? NULL : PyLong_FromLongLong(unwrapped);
        PyObject *number = unwrapped_obj ? unwrapped_obj : made;
        PyObject *noted = number ? PyObject_CallFunctionObjArgs(p->note_completed, node, name,
                                                                number, NULL)
                                 : NULL;
        rc = noted != NULL ? 1 : -1;
        Py_XDECREF(noted);
        Py_XDECREF(made);
    }
    Py_DECREF(node);
    return rc;
}

/* The run as a whole event completed here: 1 done, 0 left to push_run (nothing changed),
 * -1 error. */
static int whole_run(Parts *p, PyObject *run)
{
    Py_ssize_t n = PyList_GET_SIZE(run);
    PyObject *first = PyList_GET_ITEM(run, 0);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!Py_IS_TYPE(PyList_GET_ITEM(run, i), record_type))
            return 0; /* push_run reads every record: it raises or copes, as before */
    if (!record_type_is(PyList_GET_ITEM(run, n - 1), EOE_TYPE) || n >= p->max_records)
        return 0;
    PyObject *key, *name, *serial_obj = slot(first, record_offsets[R_SERIAL]);
    int rc = key_of(first, &key, &name);
    if (rc <= 0)
        return rc;
    rc = 0;
    int seen = PyDict_Contains(p->open, key);
    if (seen == 0)
        seen = PyDict_Contains(p->recent->keys, key);
    if (seen != 0) {
        rc = seen < 0 ? -1 : 0;
        goto done;
    }
    PyObject *node = PyDict_GetItemWithError(p->nodes, name);
    if (node == NULL) {
        rc = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    /* _NodeSerials.unwrap's near case, read only. */
    long long stride, serial, last;
    if (!Py_IS_TYPE(node, node_type) || !small(slot(node, node_offsets[N_STRIDE]), &stride) ||
        stride < 1 || !small(serial_obj, &serial) || serial < 0 ||
        !small(slot(node, node_offsets[N_LAST_SEEN]), &last))
        goto done;
    if (stride != 1)
        serial /= stride;
    serial &= SERIAL_MASK;
    long long delta = (long long)(((uint64_t)serial - (uint64_t)last) & (uint64_t)SERIAL_MASK);
    if (delta >= SERIAL_HALF)
        delta -= 2 * SERIAL_HALF;
    if (delta < -BACKWARD_JUMP || delta > BACKWARD_JUMP)
        goto done;
    long long unwrapped = last + delta;
    if ((delta > 0 && slot(node, node_offsets[N_CANDIDATE]) != Py_None) || unwrapped >= FITS ||
        PyDict_GET_SIZE(p->open) >= p->max_in_flight)
        goto done; /* a stray to judge, or an eviction first: push_run */

    /* From here on, push_run's changes, in its order. */
    p->records += n;
    if (delta > 0) {
        PyObject *seen_to = PyLong_FromLongLong(unwrapped);
        if (seen_to == NULL) {
            rc = -1;
            goto done;
        }
        set_slot(node, node_offsets[N_LAST_SEEN], seen_to);
    }
    if (recent_add_new(p->recent, key) < 0) { /* _done's _recent.add: not held (above) */
        rc = -1;
        goto done;
    }
    rc = completed(p, run, node, name, NULL, unwrapped);
done:
    Py_DECREF(key);
    return rc;
}

/* push() of one record whose event is open (records of events that interleave, as a
 * replayed log's may): appended here and, an EOE, the event completed as _finish does.
 * 1 done, 0 left to push (nothing changed), -1 error. */
static int joins_open(Parts *p, PyObject *rec, long long now)
{
    long long type, unwrapped = 0;
    if (!Py_IS_TYPE(rec, record_type) || !small(slot(rec, record_offsets[R_TYPE]), &type))
        return 0;
    if ((type < 1300 || type >= 2100 || type == KERNEL_TYPE) && type != LOGIN_TYPE)
        return 0; /* completes alone */
    PyObject *key, *name;
    int rc = key_of(rec, &key, &name);
    if (rc <= 0)
        return rc;
    rc = 0;
    PyObject *event = PyDict_GetItemWithError(p->open, key); /* borrowed */
    if (event == NULL) {
        rc = PyErr_Occurred() ? -1 : 0; /* opens an event, or comes late: push */
        goto done;
    }
    PyObject *records = Py_IS_TYPE(event, open_type) ? slot(event, open_offsets[O_RECORDS]) : NULL;
    PyObject *unwrapped_obj = Py_IS_TYPE(event, open_type) ? slot(event, open_offsets[O_UNWRAPPED])
                                                           : NULL;
    if (records == NULL || !PyList_CheckExact(records) || unwrapped_obj == NULL)
        goto done;
    int eoe = type == EOE_TYPE;
    if (!eoe && PyList_GET_SIZE(records) + 1 >= p->max_records)
        goto done; /* it would be evicted: push */
    PyObject *node = NULL;
    if (eoe) {
        node = PyDict_GetItemWithError(p->nodes, name);
        if (node == NULL) {
            rc = PyErr_Occurred() ? -1 : 0; /* a node forgotten meanwhile: push */
            goto done;
        }
        if (!Py_IS_TYPE(node, node_type) || !small(unwrapped_obj, &unwrapped))
            goto done;
    }

    /* From here on, push's changes, in its order. */
    p->records++;
    if (move_clock(p, now) < 0 || PyList_Append(records, rec) < 0) {
        rc = -1;
        goto done;
    }
    rc = 1;
    if (!eoe)
        goto done;
    Py_INCREF(records);
    Py_INCREF(unwrapped_obj);
    Py_INCREF(node);
    /* _finish: out of _open (the event object goes with it), then _done. */
    if (PyObject_DelItem(p->open, key) < 0 || recent_add(p->recent, key) < 0)
        rc = -1;
    else
        rc = completed(p, records, node, name, unwrapped_obj, unwrapped);
    Py_DECREF(node);
    Py_DECREF(unwrapped_obj);
    Py_DECREF(records);
done:
    Py_DECREF(key);
    return rc;
}

/* The run's own time (sec * 1000 + msec) when it fits; 0 when not. */
static int run_stamp(PyObject *first, long long *stamp)
{
    long long sec, msec;
    if (!Py_IS_TYPE(first, record_type) || !small(slot(first, record_offsets[R_SEC]), &sec) ||
        !small(slot(first, record_offsets[R_MSEC]), &msec) || sec > FITS / 2000 ||
        sec < -FITS / 2000)
        return 0;
    *stamp = sec * 1000 + msec;
    return *stamp < FITS && *stamp > -FITS;
}

/* The Python function on items[from:], with what this call found so far. */
static PyObject *rest_in_python(PyObject *items, Py_ssize_t from, Parts *p, long long clock,
                                PyObject *event_time, PyObject *on_unparsed, PyObject *last)
{
    if (p->open != NULL && parts_flush(p) < 0)
        return NULL;
    PyObject *rest = PyList_GetSlice(items, from, PyList_GET_SIZE(items));
    PyObject *clock_obj = rest ? PyLong_FromLongLong(clock) : NULL;
    PyObject *result = clock_obj ? PyObject_CallFunctionObjArgs(python_push_items, rest, p->self,
                                                                clock_obj, event_time, on_unparsed,
                                                                NULL)
                                 : NULL;
    Py_XDECREF(rest);
    Py_XDECREF(clock_obj);
    if (result == NULL || last == NULL)
        return result;
    if (!PyTuple_CheckExact(result) || PyTuple_GET_SIZE(result) != 2) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_TypeError, "push_items returned no (clock, last) pair");
        return NULL;
    }
    if (PyTuple_GET_ITEM(result, 1) != Py_None)
        return result;
    PyObject *joined = PyTuple_Pack(2, PyTuple_GET_ITEM(result, 0), last);
    Py_DECREF(result);
    return joined;
}

static PyObject *py_push_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "push_items(items: list, reassembler, clock_ms, event_time, on_unparsed)");
        return NULL;
    }
    PyObject *items = args[0], *event_time_obj = args[3], *on_unparsed = args[4];
    int event_time = PyObject_IsTrue(event_time_obj);
    if (event_time < 0)
        return NULL;
    Parts p;
    long long clock;
    int known = parts_read(args[1], &p);
    if (known < 0) {
        parts_clear(&p);
        return NULL;
    }
    if (!known || !small(args[2], &clock)) {
        parts_clear(&p);
        return PyObject_Vectorcall(python_push_items, args, 5, NULL);
    }
    PyObject *last = NULL, *result = NULL; /* last: borrowed from items */
    Py_ssize_t i;
    for (i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyList_CheckExact(item)) { /* an Unparsed */
            Py_INCREF(item);
            PyObject *done = PyObject_CallOneArg(on_unparsed, item);
            Py_DECREF(item);
            if (done == NULL)
                goto fail;
            Py_DECREF(done);
            continue;
        }
        Py_ssize_t n = PyList_GET_SIZE(item);
        if (n == 0)
            break; /* parse_batch makes none; Python raises on item[0] */
        PyObject *first = PyList_GET_ITEM(item, 0);
        if (event_time) {
            long long stamp;
            if (!run_stamp(first, &stamp))
                break;
            if (stamp > clock)
                clock = stamp;
        }
        int done = 0;
        Py_INCREF(item);
        if (n > 1)
            done = move_clock(&p, clock) < 0 ? -1 : whole_run(&p, item);
        else
            done = joins_open(&p, first, clock);
        Py_DECREF(item);
        if (done < 0)
            goto fail;
        if (!done) {
            PyObject *clock_obj = PyLong_FromLongLong(clock);
            if (clock_obj == NULL)
                goto fail;
            Py_INCREF(item);
            PyObject *call[2] = {n == 1 ? first : item, clock_obj};
            Py_INCREF(call[0]);
            PyObject *pushed = PyObject_Vectorcall(n == 1 ? p.push : p.push_run, call, 2, NULL);
            Py_DECREF(call[0]);
            Py_DECREF(item);
            Py_DECREF(clock_obj);
            if (pushed == NULL)
                goto fail;
            Py_DECREF(pushed);
            /* The Python methods may have moved _clock on: read it again. */
            PyObject *now = PyObject_GetAttr(p.self, s_clock);
            int fits = now != NULL && small(now, &p.clock);
            Py_XDECREF(now);
            if (now == NULL)
                goto fail;
            if (!fits) {
                i++;
                last = PyList_GET_ITEM(item, n - 1);
                break;
            }
        }
        last = PyList_GET_ITEM(item, n - 1);
    }
    if (i < PyList_GET_SIZE(items)) {
        Py_XINCREF(last);
        result = rest_in_python(items, i, &p, clock, event_time_obj, on_unparsed, last);
        Py_XDECREF(last);
        parts_clear(&p);
        return result;
    }
    if (parts_flush(&p) < 0)
        goto fail;
    parts_clear(&p);
    PyObject *clock_obj = PyLong_FromLongLong(clock);
    if (clock_obj == NULL)
        return NULL;
    result = PyTuple_Pack(2, clock_obj, last != NULL ? last : Py_None);
    Py_DECREF(clock_obj);
    return result;
fail:
    {
        /* Keep the counts of what was done, then raise. */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (parts_flush(&p) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, traceback);
    }
    parts_clear(&p);
    return NULL;
}

static PyMethodDef methods[] = {
    {"push_items", (PyCFunction)(void (*)(void))py_push_items, METH_FASTCALL,
     "push_items(items, reassembler, clock_ms, event_time, on_unparsed) -> (clock_ms, last): "
     "assembler.batch.push_items, whole-event runs completed in C."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_runs",
                                    "assembler.batch.push_items in C (see assembler/native.py).",
                                    -1, methods};

/* The constants this file copies must be the Python ones. */
static int constants_agree(PyObject *reassembler_module)
{
    static const struct {
        const char *name;
        long long value;
    } copied[] = {{"EOE_TYPE", EOE_TYPE}, {"SERIAL_MASK", SERIAL_MASK},
                  {"BACKWARD_JUMP", BACKWARD_JUMP}, {"IN_SPACE", 0},
                  {"LOGIN_TYPE", LOGIN_TYPE}, {"KERNEL_TYPE", KERNEL_TYPE}};
    for (size_t k = 0; k < sizeof copied / sizeof copied[0]; k++) {
        PyObject *value = PyObject_GetAttrString(reassembler_module, copied[k].name);
        long long v;
        int same = value != NULL && small(value, &v) && v == copied[k].value;
        Py_XDECREF(value);
        if (!same) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ImportError, "native_runs: reassembler.%s is not %lld",
                             copied[k].name, copied[k].value);
            return -1;
        }
    }
    return 0;
}

PyMODINIT_FUNC PyInit_native_runs(void)
{
#define NAME(var, text)                                                                   \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                 \
        return NULL;
    NAME(s_open, "_open") NAME(s_recent, "_recent") NAME(s_nodes, "_nodes")
    NAME(s_stats, "_stats") NAME(s_on_complete, "_on_complete") NAME(s_clock, "_clock")
    NAME(s_push, "push") NAME(s_push_run, "push_run") NAME(s_note_completed, "_note_completed")
    NAME(s_max_records, "_max_records_per_event") NAME(s_max_in_flight, "_max_in_flight")
    NAME(s_records, "records")
    NAME(s_events, "events")
#undef NAME
    PyObject *recent = PyImport_ImportModule("assembler.native_recent");
    if (recent == NULL)
        return NULL;
    recent_type = (PyTypeObject *)PyObject_GetAttrString(recent, "RecentKeys");
    Py_DECREF(recent);
    if (recent_type == NULL)
        return NULL;
    PyObject *reassembler = PyImport_ImportModule("assembler.reassembler");
    PyObject *parse = reassembler ? PyImport_ImportModule("assembler.parse") : NULL;
    PyObject *batch = parse ? PyImport_ImportModule("assembler.batch") : NULL;
    PyObject *reasons = batch ? PyObject_GetAttrString(reassembler, "CompletionReason") : NULL;
    int ok = reasons != NULL && constants_agree(reassembler) == 0 &&
             (record_type = (PyTypeObject *)PyObject_GetAttrString(parse, "Record")) != NULL &&
             (node_type = (PyTypeObject *)PyObject_GetAttrString(reassembler, "_NodeSerials")) !=
                 NULL &&
             (open_type = (PyTypeObject *)PyObject_GetAttrString(reassembler, "_OpenEvent")) !=
                 NULL &&
             PyType_Check(record_type) && PyType_Check(node_type) && PyType_Check(open_type) &&
             (python_push_items = PyObject_GetAttrString(batch, "push_items")) != NULL &&
             (reason_eoe = PyObject_GetAttrString(reasons, "EOE")) != NULL &&
             slot_offsets(record_type, record_names, record_offsets, R_COUNT) == 0 &&
             slot_offsets(node_type, node_names, node_offsets, N_COUNT) == 0 &&
             slot_offsets(open_type, open_names, open_offsets, O_COUNT) == 0;
    Py_XDECREF(reassembler);
    Py_XDECREF(parse);
    Py_XDECREF(batch);
    Py_XDECREF(reasons);
    if (!ok) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ImportError, "native_runs: unexpected assembler classes");
        return NULL;
    }
    return PyModule_Create(&module);
}
