/*
 * Part of treekeeper/csrc/enrich.c (included once, before its method table): apply_ready,
 * treekeeper/pipeline.py's TreeStep._apply loop.
 *
 * Reference: TreeStep._apply, ProcessTable.observe and ProcessTable.enrich. For each released
 * event: observe (this module's observe; its other answers finished as ProcessTable.observe
 * finishes them: False by the Python method, (actor, at_ms) by _act, a list as it is; a
 * TypeError, ValueError or AttributeError counted in stats.bad_docs), the live container
 * step (the Python method, for an exec syscall only), enrich (this module's, False finished
 * by the Python method, the same three errors counted), then the event and its lifecycle
 * docs appended to out. Why: three Python calls per event were ~0.4 µs of the tree keeper's.
 * The table's view (table_view) is taken once for the events up to the next that runs
 * Python code (a method's fallback, the container step), not twice per event (~2k
 * instructions). The C enrich of one call goes through one memo (enrich_memo.h): a run of
 * one process's events that would be enriched alike shares one `process` dict.
 */
#ifndef AUDITSTREAM_ENRICH_APPLY_H
#define AUDITSTREAM_ENRICH_APPLY_H

static PyObject *ap_doc, *ap_key, *ap_raw, *ap_bad_docs, *ap_act, *ap_observe, *ap_enrich,
    *ap_execve, *ap_execveat, *ap_lifecycle_events;

/* ProcessTable.observe's and .enrich's except clause: the error counted, or 0 to propagate. */
static int counted_bad_doc(PyObject *table)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError) &&
        !PyErr_ExceptionMatches(PyExc_AttributeError))
        return 0;
    PyErr_Clear();
    PyObject *stats = PyObject_GetAttr(table, s_stats);
    int rc = stats ? add_to_attr(stats, ap_bad_docs, 1) : -1;
    Py_XDECREF(stats);
    return rc == 0;
}

/* The Python methods: for a doc that is not an exact dict (they cope or raise), and for
 * one the C code declined (it declines again there). */
static PyObject *python_observe(PyObject *table, PyObject *doc)
{
    return PyObject_CallMethodOneArg(table, ap_observe, doc);
}

static int python_enrich(PyObject *table, PyObject *doc)
{
    PyObject *done = PyObject_CallMethodOneArg(table, ap_enrich, doc);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* ProcessTable.observe(doc) with this module's observe and the table's view (NULL: the
 * table declined one): a new list, or NULL on error. *python is set when Python ran. */
static PyObject *observed(PyObject *table, PyObject *doc, Table *view, int *python)
{
    PyObject *taken = view != NULL ? observe_with(view, table, doc) : Py_NewRef(Py_False);
    if (taken == Py_True) {
        Py_DECREF(taken);
        return PyList_New(0);
    }
    if (taken == Py_False) { /* nothing done: the Python method does it all (C declines again) */
        Py_DECREF(taken);
        *python = 1;
        return python_observe(table, doc);
    }
    PyObject *out = NULL;
    if (taken != NULL && PyList_CheckExact(taken))
        return taken;
    if (taken != NULL && PyTuple_CheckExact(taken) && PyTuple_GET_SIZE(taken) == 2) {
        *python = 1;
        out = PyList_New(0);
        PyObject *done = out ? PyObject_CallMethodObjArgs(table, ap_act, doc, PyTuple_GET_ITEM(taken, 0),
                                                          PyTuple_GET_ITEM(taken, 1), out, NULL)
                             : NULL;
        Py_XDECREF(done);
        if (done == NULL)
            Py_CLEAR(out);
    } else if (taken != NULL) {
        out = Py_NewRef(taken); /* what ProcessTable.observe returns as it is */
    }
    Py_XDECREF(taken);
    if (out == NULL && counted_bad_doc(table))
        return PyList_New(0);
    return out;
}

/* TreeStep._live_container's test: an exec syscall (1), not (0), or ask it (-1). The docs
 * here are exact dicts with str keys, so a lookup cannot fail. */
static int exec_syscall(PyObject *doc)
{
    PyObject *auditd = PyDict_GetItem(doc, s_auditd);
    if (auditd == NULL)
        return 0;
    if (!PyDict_CheckExact(auditd))
        return -1;
    PyObject *data = PyDict_GetItem(auditd, s_data);
    if (data == NULL)
        return 0;
    if (!PyDict_CheckExact(data))
        return -1;
    PyObject *syscall = PyDict_GetItem(data, s_syscall);
    if (syscall == NULL)
        return 0;
    if (!PyUnicode_CheckExact(syscall))
        return -1;
    return PyUnicode_Compare(syscall, ap_execve) == 0 || PyUnicode_Compare(syscall, ap_execveat) == 0;
}

/* ProcessTable.enrich(doc) with this module's enrich, the table's view (NULL: the table
 * declined one) and the call's memo (enrich_memo.h); 0, or -1 on error. *python is set when
 * Python ran. */
static int enriched(PyObject *table, PyObject *doc, Table *view, EnrichMemo *memo, int *python)
{
    PyObject *done = view != NULL ? enrich_with_memo(view, doc, memo) : Py_NewRef(Py_False);
    if (done == Py_False) { /* nothing done: the Python method (enrich_doc) */
        Py_DECREF(done);
        *python = 1;
        return python_enrich(table, doc);
    }
    Py_XDECREF(done);
    return done != NULL || counted_bad_doc(table) ? 0 : -1;
}

/* lifecycle += live(doc), as _apply does for a live tree keeper; 0, or -1 on error. */
static int add_live_container(PyObject *lifecycle, PyObject *doc, PyObject *live, int *python)
{
    int exec = PyDict_CheckExact(doc) ? exec_syscall(doc) : -1;
    if (exec == 0)
        return 0; /* _live_container returns [] */
    *python = 1;
    PyObject *more = PyObject_CallOneArg(live, doc);
    PyObject *joined = more ? PySequence_InPlaceConcat(lifecycle, more) : NULL;
    Py_XDECREF(more);
    Py_XDECREF(joined); /* lifecycle itself, extended in place */
    return joined == NULL ? -1 : 0;
}

/* The event's lifecycle docs after it in out, each {"key": its key, "raw": [], "doc": it}. */
static Py_ssize_t append_lifecycle(PyObject *event, PyObject *lifecycle, PyObject *out)
{
    Py_ssize_t count = PyList_GET_SIZE(lifecycle);
    if (count == 0)
        return 0;
    PyObject *key = PyObject_GetItem(event, ap_key);
    if (key == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lifecycle); i++) {
        PyObject *raw = PyList_New(0), *marker = raw ? PyDict_New() : NULL;
        int rc = marker && PyDict_SetItem(marker, ap_key, key) == 0 &&
                         PyDict_SetItem(marker, ap_raw, raw) == 0 &&
                         PyDict_SetItem(marker, ap_doc, PyList_GET_ITEM(lifecycle, i)) == 0 &&
                         PyList_Append(out, marker) == 0
                     ? 0 : -1;
        Py_XDECREF(raw);
        Py_XDECREF(marker);
        if (rc < 0) {
            Py_DECREF(key);
            return -1;
        }
    }
    Py_DECREF(key);
    return count;
}

/* One released event into the table and out, with the table's view (or NULL); the number
 * of lifecycle docs, or -1. *python is set when Python code ran (the view may be stale). */
static Py_ssize_t apply_one(PyObject *table, PyObject *event, PyObject *out, PyObject *live,
                            Table *view, EnrichMemo *memo, int *python)
{
    PyObject *doc = PyObject_GetItem(event, ap_doc);
    if (doc == NULL)
        return -1;
    int plain = PyDict_CheckExact(doc);
    if (!plain)
        *python = 1;
    Py_ssize_t added = -1;
    PyObject *lifecycle = plain ? observed(table, doc, view, python) : python_observe(table, doc);
    if (lifecycle != NULL && !PyList_CheckExact(lifecycle)) {
        PyErr_SetString(PyExc_TypeError, "apply_ready: observe gave no list");
        Py_CLEAR(lifecycle);
    }
    /* enrich may use the view from before a Python observe of this doc: what that changes
     * of it is the event-time cache for this same doc's time (tree.py event_ms), which the
     * view only uses to skip a parse, so both give the same time and write the same values. */
    if (lifecycle != NULL &&
        (live == Py_None || add_live_container(lifecycle, doc, live, python) == 0) &&
        (plain ? enriched(table, doc, view, memo, python) : python_enrich(table, doc)) == 0 &&
        PyList_Append(out, event) == 0)
        added = append_lifecycle(event, lifecycle, out);
    Py_XDECREF(lifecycle);
    Py_DECREF(doc);
    return added;
}

/* step.lifecycle_events += count, keeping an exception that is being raised. */
static int count_lifecycle(PyObject *step, Py_ssize_t count)
{
    if (count == 0)
        return 0;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    int rc = add_to_attr(step, ap_lifecycle_events, count);
    if (type != NULL) {
        PyErr_Clear();
        PyErr_Restore(type, value, traceback);
    }
    return rc;
}

static PyObject *py_apply_ready(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_CheckExact(args[2]) || !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "apply_ready(step, table, ready: list, out: list, live_container | None)");
        return NULL;
    }
    PyObject *step = args[0], *table = args[1], *ready = args[2], *out = args[3], *live = args[4];
    Py_ssize_t total = 0;
    Table view;
    int viewing = 0; /* 1: view holds the table as it is; 0: take it; -1: the table declined */
    EnrichMemo memo = {.section_at = -1}; /* this call's last enrichment (enrich_memo.h) */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ready); i++) {
        PyObject *event = Py_NewRef(PyList_GET_ITEM(ready, i));
        if (viewing == 0)
            viewing = table_view(table, &view) == 0 ? 1 : -1;
        int python = 0;
        Py_ssize_t added =
            apply_one(table, event, out, live, viewing > 0 ? &view : NULL, &memo, &python);
        Py_DECREF(event);
        if (python || viewing < 0 || added < 0) { /* Python may have changed the table */
            if (viewing > 0)
                table_release(&view);
            viewing = 0;
        }
        if (added < 0) {
            memo_clear(&memo);
            count_lifecycle(step, total);
            return NULL;
        }
        total += added;
    }
    memo_clear(&memo);
    if (viewing > 0)
        table_release(&view);
    if (count_lifecycle(step, total) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int apply_ready_init(void)
{
#define AP_STRING(var, text)                                                              \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                 \
        return -1;
    AP_STRING(ap_doc, "doc") AP_STRING(ap_key, "key") AP_STRING(ap_raw, "raw")
    AP_STRING(ap_bad_docs, "bad_docs") AP_STRING(ap_act, "_act") AP_STRING(ap_observe, "observe")
    AP_STRING(ap_enrich, "enrich") AP_STRING(ap_execve, "execve")
    AP_STRING(ap_execveat, "execveat") AP_STRING(ap_lifecycle_events, "lifecycle_events")
#undef AP_STRING
    return 0;
}

#endif
