/* treekeeper.native_reorder: treekeeper/reorder.py's ReorderWindow in C, and the loop of
 * TreeStep.process that pushes a frame's events into it (push_frame).
 *
 * Reference: treekeeper/reorder.py, which stays THE reference: every method here returns
 * what the Python class returns, in the same order, and keeps the same counters
 * (tests/test_native_reorder.py runs both on random operation sequences). The Python
 * window cost ~0.45 µs per event of the tree keeper (a method call, a tuple and heapq's
 * tuple comparisons per event: docs/performance.md, twenty-seventh pass).
 *
 * Times, serials and sources are ints, as the tree keeper passes them (the assemblers'
 * keys): anything else is a TypeError here where Python would compare it. Event times are
 * held as 128-bit ints: an audit header's seconds have up to 18 digits, so sec * 1000 can
 * pass int64. Sources are int64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <string.h>

typedef __int128 i128;

#define BACKWARD_RUN 32 /* reorder.py BACKWARD_RUN */
#define MIN_JUMP_MS 1000 /* reorder.py MIN_JUMP_MS */

/* ---- ints ------------------------------------------------------------------------------ */

static int as_i128(PyObject *obj, i128 *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "reorder window: an int, not %.80s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow;
    long long small = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (!overflow) {
        if (small == -1 && PyErr_Occurred())
            return -1;
        *out = small;
        return 0;
    }
    unsigned char bytes[16];
#if PY_VERSION_HEX >= 0x030D0000
    if (_PyLong_AsByteArray((PyLongObject *)obj, bytes, 16, 1, 1, 1) < 0)
#else
    if (_PyLong_AsByteArray((PyLongObject *)obj, bytes, 16, 1, 1) < 0)
#endif
        return -1;
    unsigned __int128 value = 0;
    for (int i = 15; i >= 0; i--)
        value = value << 8 | bytes[i];
    *out = (i128)value;
    return 0;
}

static PyObject *from_i128(i128 value)
{
    if (value >= LLONG_MIN && value <= LLONG_MAX)
        return PyLong_FromLongLong((long long)value);
    unsigned char bytes[16];
    unsigned __int128 bits = (unsigned __int128)value;
    for (int i = 0; i < 16; i++, bits >>= 8)
        bytes[i] = (unsigned char)(bits & 0xFF);
    return _PyLong_FromByteArray(bytes, 16, 1, 1);
}

static int as_source(PyObject *obj, long long *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "reorder window: a source is an int, not %.80s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyLong_AsLongLong(obj);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* ---- the window ---------------------------------------------------------------------- */

typedef struct {
    i128 at_ms, serial;
    unsigned long long count;
    PyObject *item; /* owned */
} Entry;

/* What reorder.py keeps in its per-source dicts and set, for one source. */
typedef struct {
    long long id;
    int known; /* in _newest */
    i128 newest;
    int closed; /* in _closed */
    int has_claim; /* in _claims */
    i128 claim_ms, claim_serial;
    int has_behind; /* in _behind */
    long long run;
    i128 run_newest;
} Source;

typedef struct {
    PyObject_HEAD long long window_ms, max_held, jump_ms;
    long long timelines, released_by_claim, released_full;
    i128 last_jump_ms, horizon;
    unsigned long long count;
    Entry *heap;
    Py_ssize_t size, room;
    Source *sources;
    Py_ssize_t nsources, sources_room;
} Window;

static Source *source_of(Window *w, long long id, int create)
{
    for (Py_ssize_t i = 0; i < w->nsources; i++)
        if (w->sources[i].id == id)
            return &w->sources[i];
    if (!create)
        return NULL;
    if (w->nsources == w->sources_room) {
        Py_ssize_t room = w->sources_room ? w->sources_room * 2 : 8;
        Source *grown = PyMem_Realloc(w->sources, (size_t)room * sizeof(Source));
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        w->sources = grown;
        w->sources_room = room;
    }
    Source *s = &w->sources[w->nsources++];
    memset(s, 0, sizeof *s);
    s->id = id;
    return s;
}

/* _slowest: the oldest newest time of the open sources; all closed: the newest of all (0
 * when none is known). */
static i128 slowest(const Window *w)
{
    int open_found = 0, any = 0;
    i128 low = 0, high = 0;
    for (Py_ssize_t i = 0; i < w->nsources; i++) {
        const Source *s = &w->sources[i];
        if (!s->known)
            continue;
        if (!any || s->newest > high)
            high = s->newest;
        any = 1;
        if (!s->closed && (!open_found || s->newest < low)) {
            low = s->newest;
            open_found = 1;
        }
    }
    return open_found ? low : (any ? high : 0);
}

static inline int entry_less(const Entry *a, const Entry *b)
{
    if (a->at_ms != b->at_ms)
        return a->at_ms < b->at_ms;
    if (a->serial != b->serial)
        return a->serial < b->serial;
    return a->count < b->count;
}

static int heap_push(Window *w, PyObject *item, i128 at_ms, i128 serial)
{
    if (w->size == w->room) {
        Py_ssize_t room = w->room ? w->room * 2 : 64;
        Entry *grown = PyMem_Realloc(w->heap, (size_t)room * sizeof(Entry));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        w->heap = grown;
        w->room = room;
    }
    Entry e = {at_ms, serial, ++w->count, Py_NewRef(item)};
    Py_ssize_t at = w->size++;
    while (at > 0) {
        Py_ssize_t up = (at - 1) / 2;
        if (!entry_less(&e, &w->heap[up]))
            break;
        w->heap[at] = w->heap[up];
        at = up;
    }
    w->heap[at] = e;
    return 0;
}

/* The smallest entry's item (a reference the caller owns). */
static PyObject *heap_pop(Window *w)
{
    PyObject *item = w->heap[0].item;
    Entry last = w->heap[--w->size];
    Py_ssize_t at = 0;
    for (;;) {
        Py_ssize_t child = 2 * at + 1;
        if (child >= w->size)
            break;
        if (child + 1 < w->size && entry_less(&w->heap[child + 1], &w->heap[child]))
            child++;
        if (!entry_less(&w->heap[child], &last))
            break;
        w->heap[at] = w->heap[child];
        at = child;
    }
    if (w->size > 0)
        w->heap[at] = last;
    return item;
}

/* Pop the smallest onto out. */
static int pop_into(Window *w, PyObject *out)
{
    PyObject *item = heap_pop(w);
    int rc = PyList_Append(out, item);
    Py_DECREF(item);
    return rc;
}

/* _release_full */
static int release_full(Window *w, PyObject *out)
{
    while (w->size > w->max_held) {
        if (pop_into(w, out) < 0)
            return -1;
        w->released_full++;
    }
    return 0;
}

/* _release_by_time's loop and bound */
static int release_by_time(Window *w, PyObject *out)
{
    i128 limit = w->horizon - w->window_ms;
    while (w->size > 0 && w->heap[0].at_ms < limit)
        if (pop_into(w, out) < 0)
            return -1;
    return w->size > w->max_held ? release_full(w, out) : 0;
}

static int flush_into(Window *w, PyObject *out)
{
    while (w->size > 0)
        if (pop_into(w, out) < 0)
            return -1;
    return 0;
}

/* _went_back: 1 when the source's time went back for good, 0 not (yet), -1 error. */
static int went_back(Window *w, long long id, i128 at_ms, i128 newest)
{
    Source *s = source_of(w, id, 1);
    if (s == NULL)
        return -1;
    long long run = s->has_behind ? s->run : 0;
    i128 run_newest = s->has_behind ? s->run_newest : at_ms;
    run += 1;
    if (at_ms > run_newest)
        run_newest = at_ms;
    if (run < BACKWARD_RUN) {
        s->has_behind = 1;
        s->run = run;
        s->run_newest = run_newest;
        return 0;
    }
    s->has_behind = 0;
    s->known = 1;
    s->newest = run_newest;
    w->horizon = slowest(w);
    w->timelines++;
    w->last_jump_ms = newest - run_newest;
    return 1;
}

/* _note_time, appending what it releases (a flush) to out. */
static int note_time(Window *w, i128 at_ms, long long id, PyObject *out)
{
    Source *s = source_of(w, id, 0);
    i128 newest = s != NULL && s->known ? s->newest : -1;
    if (at_ms < newest - w->jump_ms) {
        int back = went_back(w, id, at_ms, newest);
        if (back < 0)
            return -1;
        return back ? flush_into(w, out) : 0;
    }
    if (s != NULL)
        s->has_behind = 0; /* back to its time: those were isolated old events */
    if (at_ms > newest) {
        if (s == NULL && (s = source_of(w, id, 1)) == NULL)
            return -1;
        s->known = 1;
        s->newest = at_ms;
        if (newest <= w->horizon || s->closed)
            w->horizon = slowest(w);
    }
    return 0;
}

/* push_into */
static int push_one(Window *w, PyObject *item, i128 at_ms, i128 serial, long long id, PyObject *out)
{
    if (note_time(w, at_ms, id, out) < 0 || heap_push(w, item, at_ms, serial) < 0)
        return -1;
    return release_by_time(w, out);
}

/* _release_claimed */
static int release_claimed(Window *w, PyObject *out)
{
    int claims = 0;
    i128 limit_ms = 0, limit_serial = 0;
    if (w->size == 0)
        return 0;
    for (Py_ssize_t i = 0; i < w->nsources; i++) {
        const Source *s = &w->sources[i];
        if (s->has_claim) {
            if (!claims || s->claim_ms < limit_ms ||
                (s->claim_ms == limit_ms && s->claim_serial < limit_serial)) {
                limit_ms = s->claim_ms;
                limit_serial = s->claim_serial;
            }
            claims = 1;
        }
    }
    if (!claims)
        return 0;
    for (Py_ssize_t i = 0; i < w->nsources; i++) {
        const Source *s = &w->sources[i];
        if (s->known && !s->has_claim && !s->closed)
            return 0; /* a source that may still send anything has not claimed */
    }
    while (w->size > 0 && (w->heap[0].at_ms < limit_ms ||
                           (w->heap[0].at_ms == limit_ms && w->heap[0].serial < limit_serial))) {
        if (pop_into(w, out) < 0)
            return -1;
        w->released_by_claim++;
    }
    return 0;
}

/* ---- the Python type ------------------------------------------------------------------ */

static PyObject *s_raw, *s_key; /* the event keys push_frame reads (interned at import) */

static int window_init(Window *w, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"window_ms", "max_held", "sources", "jump_ms", NULL};
    long long window_ms = 250, max_held = 10000, sources = 0, jump_ms = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|LLLL", kwlist, &window_ms, &max_held,
                                     &sources, &jump_ms))
        return -1;
    w->window_ms = window_ms;
    w->max_held = max_held;
    w->jump_ms = jump_ms ? jump_ms : (4 * window_ms > MIN_JUMP_MS ? 4 * window_ms : MIN_JUMP_MS);
    for (long long i = 0; i < sources; i++) {
        Source *s = source_of(w, i, 1);
        if (s == NULL)
            return -1;
        s->known = 1;
        s->newest = -1;
    }
    w->horizon = slowest(w);
    return 0;
}

static void window_dealloc(Window *w)
{
    for (Py_ssize_t i = 0; i < w->size; i++)
        Py_DECREF(w->heap[i].item);
    PyMem_Free(w->heap);
    PyMem_Free(w->sources);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *done(int rc, PyObject *out)
{
    if (rc < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *window_horizon(Window *w, PyObject *unused) { return from_i128(w->horizon); }

static PyObject *window_close_source(Window *w, PyObject *arg)
{
    long long id;
    if (as_source(arg, &id) < 0)
        return NULL;
    Source *s = source_of(w, id, 1);
    if (s == NULL)
        return NULL;
    s->closed = 1;
    s->has_claim = 0;
    w->horizon = slowest(w);
    PyObject *out = PyList_New(0);
    return out == NULL ? NULL : done(release_claimed(w, out), out);
}

static PyObject *window_push_into(Window *w, PyObject *const *args, Py_ssize_t nargs)
{
    i128 at_ms, serial;
    long long id;
    if (nargs != 5 || !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "push_into(item, at_ms, serial, source, out: list)");
        return NULL;
    }
    if (as_i128(args[1], &at_ms) < 0 || as_i128(args[2], &serial) < 0 ||
        as_source(args[3], &id) < 0 || push_one(w, args[0], at_ms, serial, id, args[4]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *window_push(Window *w, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"item", "at_ms", "serial", "source", NULL};
    PyObject *parts[4] = {NULL, NULL, NULL, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|O", kwlist, &parts[0], &parts[1],
                                     &parts[2], &parts[3]))
        return NULL;
    i128 at_ms, serial;
    long long id = 0;
    if (as_i128(parts[1], &at_ms) < 0 || as_i128(parts[2], &serial) < 0 ||
        (parts[3] != NULL && as_source(parts[3], &id) < 0))
        return NULL;
    PyObject *out = PyList_New(0);
    return out == NULL ? NULL : done(push_one(w, parts[0], at_ms, serial, id, out), out);
}

static PyObject *window_see(Window *w, PyObject *const *args, Py_ssize_t nargs)
{
    i128 at_ms;
    long long id = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "see(at_ms, source=0)");
        return NULL;
    }
    if (as_i128(args[0], &at_ms) < 0 || (nargs == 2 && as_source(args[1], &id) < 0))
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    int rc = note_time(w, at_ms, id, out);
    return done(rc < 0 ? rc : release_by_time(w, out), out);
}

static PyObject *window_claim(Window *w, PyObject *const *args, Py_ssize_t nargs)
{
    long long id;
    i128 ms, serial;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "claim(source, sent_below)");
        return NULL;
    }
    if (as_source(args[0], &id) < 0)
        return NULL;
    PyObject *pair = PySequence_Fast(args[1], "claim: sent_below is (event ms, serial)");
    if (pair == NULL)
        return NULL;
    int bad = PySequence_Fast_GET_SIZE(pair) != 2;
    if (bad)
        PyErr_SetString(PyExc_TypeError, "claim: sent_below is (event ms, serial)");
    bad = bad || as_i128(PySequence_Fast_GET_ITEM(pair, 0), &ms) < 0 ||
          as_i128(PySequence_Fast_GET_ITEM(pair, 1), &serial) < 0;
    Py_DECREF(pair);
    if (bad)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Source *s = source_of(w, id, 1);
    if (s == NULL)
        return done(-1, out);
    if (s->closed)
        return out;
    s->has_claim = 1;
    s->claim_ms = ms;
    s->claim_serial = serial;
    return done(release_claimed(w, out), out);
}

static PyObject *window_due(Window *w, PyObject *arg)
{
    i128 now_ms;
    if (as_i128(arg, &now_ms) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    i128 limit = now_ms - w->window_ms;
    while (w->size > 0 && w->heap[0].at_ms < limit)
        if (pop_into(w, out) < 0)
            return done(-1, out);
    return out;
}

static PyObject *window_flush(Window *w, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    return out == NULL ? NULL : done(flush_into(w, out), out);
}

/* push_frame(events, source, out, start=0) -> index: TreeStep.process's loop for the
 * events of one frame from ``start``: each event with records goes in at
 * sec * 1000 + msec of its key [node, sec, msec, serial], what that releases onto out.
 * Returns the index of the first event it leaves to the caller (a marker, whose raw
 * records are empty, or a key that is not [str, int, int, int]), else len(events). */
static PyObject *window_push_frame(Window *w, PyObject *const *args, Py_ssize_t nargs)
{
    long long id;
    Py_ssize_t start = 0;
    if (nargs < 3 || nargs > 4 || !PyList_Check(args[0]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "push_frame(events: list, source, out: list, start=0)");
        return NULL;
    }
    if (as_source(args[1], &id) < 0)
        return NULL;
    if (nargs == 4 && (start = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    PyObject *events = args[0], *out = args[2];
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < PyList_GET_SIZE(events); i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (!PyDict_CheckExact(event))
            break;
        PyObject *raw = PyDict_GetItemWithError(event, s_raw);
        PyObject *key = raw != NULL ? PyDict_GetItemWithError(event, s_key) : NULL;
        if (PyErr_Occurred())
            return NULL;
        if (raw == NULL || key == NULL || !PyList_CheckExact(key) || PyList_GET_SIZE(key) != 4)
            break;
        int has_records = PyObject_IsTrue(raw);
        if (has_records < 0)
            return NULL;
        PyObject *sec = PyList_GET_ITEM(key, 1), *msec = PyList_GET_ITEM(key, 2);
        PyObject *serial_obj = PyList_GET_ITEM(key, 3);
        if (!has_records || !PyLong_CheckExact(sec) || !PyLong_CheckExact(msec) ||
            !PyLong_CheckExact(serial_obj))
            break;
        i128 s_sec, s_msec, serial;
        if (as_i128(sec, &s_sec) < 0 || as_i128(msec, &s_msec) < 0 ||
            as_i128(serial_obj, &serial) < 0)
            return NULL;
        Py_INCREF(event); /* the list is the caller's */
        int rc = push_one(w, event, s_sec * 1000 + s_msec, serial, id, out);
        Py_DECREF(event);
        if (rc < 0)
            return NULL;
    }
    return PyLong_FromSsize_t(i);
}

/* merge.py frame_order_key's loop over a frame's events (the reference): the smallest
 * sec * 1000 + msec of the events that are dicts with records and a key [_, int, int, _];
 * IMMEDIATE (-1) when none is. None, changing nothing, for times it does not hold (beyond
 * 2^100): the caller's Python loop takes those. A frame's ~100 events cost that loop ~0.3 µs
 * each in the tree keeper of a replay. */
#define IMMEDIATE (-1)
#define TIME_BOUND ((i128)1 << 100)
/* One event of oldest_event_ms: 1 with *oldest updated (or the event skipped), 0 for a
 * time beyond the bound, -1 on an error. */
static int event_time(PyObject *event, i128 *oldest)
{
    PyObject *raw = PyDict_GetItemWithError(event, s_raw);
    if (raw == NULL)
        return PyErr_Occurred() ? -1 : 1;
    Py_INCREF(raw);
    int has_records = PyObject_IsTrue(raw);
    Py_DECREF(raw);
    if (has_records <= 0)
        return has_records < 0 ? -1 : 1; /* markers skip the window */
    PyObject *key = PyDict_GetItemWithError(event, s_key);
    if (key == NULL)
        return PyErr_Occurred() ? -1 : 1;
    if (!PyList_CheckExact(key) || PyList_GET_SIZE(key) != 4)
        return 1;
    PyObject *sec = PyList_GET_ITEM(key, 1), *msec = PyList_GET_ITEM(key, 2);
    if (!PyLong_CheckExact(sec) || !PyLong_CheckExact(msec))
        return 1;
    i128 s_sec, s_msec;
    if (as_i128(sec, &s_sec) < 0 || as_i128(msec, &s_msec) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    if (s_sec >= TIME_BOUND || s_sec <= -TIME_BOUND || s_msec >= TIME_BOUND ||
        s_msec <= -TIME_BOUND)
        return 0;
    i128 at_ms = s_sec * 1000 + s_msec;
    if (*oldest == IMMEDIATE || at_ms < *oldest)
        *oldest = at_ms;
    return 1;
}

static PyObject *oldest_event_ms(PyObject *module, PyObject *events)
{
    (void)module;
    if (!PyList_CheckExact(events)) {
        PyErr_SetString(PyExc_TypeError, "oldest_event_ms(events: list)");
        return NULL;
    }
    i128 oldest = IMMEDIATE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (!PyDict_CheckExact(event))
            continue;
        Py_INCREF(event); /* a raw value's truth may run code that changes the list */
        int rc = event_time(event, &oldest);
        Py_DECREF(event);
        if (rc < 0)
            return NULL;
        if (rc == 0)
            Py_RETURN_NONE;
    }
    return from_i128(oldest);
}

static PyMethodDef module_methods[] = {
    {"oldest_event_ms", (PyCFunction)oldest_event_ms, METH_O,
     "treekeeper.merge.frame_order_key's time of a frame's events (None: left to Python)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *get_i128(Window *w, void *offset)
{
    return from_i128(*(i128 *)((char *)w + (Py_ssize_t)offset));
}

static PyMethodDef window_methods[] = {
    {"horizon", (PyCFunction)window_horizon, METH_NOARGS,
     "The event time every source still sending has reached (below 1 before that)."},
    {"close_source", (PyCFunction)window_close_source, METH_O,
     "``source`` sends nothing more: stop waiting for it; return what that frees."},
    {"push", (PyCFunction)(void (*)(void))window_push, METH_VARARGS | METH_KEYWORDS,
     "Add one event; return the events now older than the window, in order."},
    {"push_into", (PyCFunction)(void (*)(void))window_push_into, METH_FASTCALL,
     "push(), appending what it releases to ``out``."},
    {"push_frame", (PyCFunction)(void (*)(void))window_push_frame, METH_FASTCALL,
     "push_frame(events, source, out, start=0) -> index of the first event left to the caller."},
    {"see", (PyCFunction)(void (*)(void))window_see, METH_FASTCALL,
     "A dropped duplicate's time: return what moving the source's time releases."},
    {"claim", (PyCFunction)(void (*)(void))window_claim, METH_FASTCALL,
     "``source`` has sent every event below ``sent_below``: return what no source can precede."},
    {"due", (PyCFunction)window_due, METH_O,
     "Release what is older than the window at ``now_ms``."},
    {"flush", (PyCFunction)window_flush, METH_NOARGS, "Release everything held, in order."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef window_members[] = {
    {"window_ms", T_LONGLONG, offsetof(Window, window_ms), READONLY, NULL},
    {"max_held", T_LONGLONG, offsetof(Window, max_held), READONLY, NULL},
    {"jump_ms", T_LONGLONG, offsetof(Window, jump_ms), READONLY, NULL},
    {"timelines", T_LONGLONG, offsetof(Window, timelines), READONLY, NULL},
    {"released_by_claim", T_LONGLONG, offsetof(Window, released_by_claim), READONLY, NULL},
    {"released_full", T_LONGLONG, offsetof(Window, released_full), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef window_getset[] = {
    {"last_jump_ms", (getter)get_i128, NULL, "how far back the last new timeline went",
     (void *)offsetof(Window, last_jump_ms)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "treekeeper.native_reorder.ReorderWindow",
    .tp_basicsize = sizeof(Window),
    .tp_dealloc = (destructor)window_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "treekeeper.reorder.ReorderWindow in C (events in kernel order).",
    .tp_methods = window_methods,
    .tp_members = window_members,
    .tp_getset = window_getset,
    .tp_init = (initproc)window_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_reorder",
                                    "treekeeper.reorder's ReorderWindow in C.", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit_native_reorder(void)
{
    s_raw = PyUnicode_InternFromString("raw");
    s_key = PyUnicode_InternFromString("key");
    if (s_raw == NULL || s_key == NULL || PyType_Ready(&WindowType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "ReorderWindow", (PyObject *)&WindowType) < 0 ||
        PyModule_AddIntConstant(m, "BACKWARD_RUN", BACKWARD_RUN) < 0 ||
        PyModule_AddIntConstant(m, "MIN_JUMP_MS", MIN_JUMP_MS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
