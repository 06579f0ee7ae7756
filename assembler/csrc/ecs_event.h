/*
 * Part of assembler/csrc/ecs.c (included once, after ecs_write.h): EventCompleter, the
 * assembler's completion callback for events whose doc C writes.
 *
 * Reference: assembler/stage.py's Assembly._complete with written docs, and
 * assembler/events.py's event_from_records. For a completed run of two or more records
 * that the C coalesce and write_doc both take, it appends to the assembly's ``out`` the
 * event those would have made ({"key", "raw", "doc", "recv_ns"?}, in that order) and
 * counts it in ``counts["events"]``; everything else (one record, a declined event, an
 * exception from either step) goes to the fallback, the Python _complete, which does the
 * same work again and reports what went wrong as it always did. Why: the two Python frames
 * around the C steps were ~0.4 µs of the ~11 µs an event costs the assembler.
 */
#ifndef AUDITSTREAM_ECS_EVENT_H
#define AUDITSTREAM_ECS_EVENT_H

typedef struct {
    PyObject_HEAD
    PyObject *assembly;      /* its out, recv_ns, raw_records and counts, read per event */
    PyObject *coalesce;      /* assembler.native_coalesce.coalesce */
    PyObject *fallback;      /* Assembly._complete */
    PyObject *completed_by;  /* CompletionReason -> completed_by (str or None) */
    vectorcallfunc vectorcall;
} EventCompleter;

static PyObject *s_out, *s_recv_ns, *s_raw_records, *s_counts, *s_events, *s_key, *s_raw,
    *s_doc;

static PyObject *completer_fallback(EventCompleter *self, PyObject *records, PyObject *reason)
{
    PyObject *args[2] = {records, reason};
    return PyObject_Vectorcall(self->fallback, args, 2, NULL);
}

/* An exception of a C step: Python's run of the same step raises it again and reports it,
 * so hand the event over (1); a MemoryError or a non-Exception (a signal's
 * KeyboardInterrupt) propagates (0). */
static int leave_error_to_fallback(void)
{
    if (PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* A new list of the items; NULL without an exception when one is NULL (an unset slot). */
static PyObject *list_of(PyObject *const *items, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++)
        if (items[i] == NULL)
            return NULL;
    PyObject *list = PyList_New(count);
    for (Py_ssize_t i = 0; list != NULL && i < count; i++)
        PyList_SET_ITEM(list, i, Py_NewRef(items[i]));
    return list;
}

/* [node, sec, msec, serial] of the first record; NULL without an exception: unset slots. */
static PyObject *event_key(PyObject *first)
{
    PyObject *items[4] = {slot(first, record_offsets[R_NODE]), slot(first, record_offsets[R_SEC]),
                          slot(first, record_offsets[R_MSEC]),
                          slot(first, record_offsets[R_SERIAL])};
    return list_of(items, 4);
}

/* [[type, data, node], ...] of the records; NULL without an exception: unset slots. */
static PyObject *event_raw(PyObject *records)
{
    Py_ssize_t n = PyList_GET_SIZE(records);
    PyObject *raw = PyList_New(n);
    for (Py_ssize_t i = 0; raw != NULL && i < n; i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        PyObject *items[3] = {slot(rec, record_offsets[R_TYPE]), slot(rec, record_offsets[R_DATA]),
                              slot(rec, record_offsets[R_NODE])};
        PyObject *row = list_of(items, 3);
        if (row == NULL)
            Py_CLEAR(raw);
        else
            PyList_SET_ITEM(raw, i, row);
    }
    return raw;
}

/* The doc of a fused event (ecs_fused.h) when native_coalesce reads one and it is written;
 * NULL: an exception, or none (declined) without one. */
static PyObject *fused_doc(const FusedApi *api, PyObject *records, PyObject *completed_by)
{
    /* ENRICHED names of the ids (the lead record's trailer): the user object's dict path */
    PyObject *lead = PyList_GET_ITEM(records, 0);
    if (!Py_IS_TYPE(lead, record_type))
        return NULL; /* its slots may be elsewhere: the Coalesced way reads it */
    PyObject *enriched = slot(lead, record_offsets[R_ENRICHED]);
    if (enriched == NULL || !PyBytes_CheckExact(enriched) || PyBytes_GET_SIZE(enriched) != 0)
        return NULL;
    FusedEvent ev;
    int got = api->read(records, &ev);
    if (got <= 0)
        return NULL;
    PyObject *doc = write_fused_doc(records, &ev, completed_by);
    api->release(&ev);
    if (doc == Py_None) {
        fused_unwritten++;
        Py_CLEAR(doc);
    } else if (doc != NULL) {
        fused_written++;
    }
    return doc;
}

/* The doc of the Coalesced way; NULL: an exception, or none (declined) without one. */
static PyObject *coalesced_doc(EventCompleter *self, PyObject *records, PyObject *completed_by)
{
    PyObject *coalesced = PyObject_Vectorcall(self->coalesce, &records, 1, NULL);
    if (coalesced == NULL || coalesced == Py_None) {
        Py_XDECREF(coalesced);
        return NULL;
    }
    PyObject *doc = write_doc_of(records, coalesced, completed_by);
    Py_DECREF(coalesced);
    if (doc == Py_None)
        Py_CLEAR(doc);
    return doc;
}

/* The event of records, doc written; NULL: an exception, or none (declined, or a record's
 * slot unset) without one. */
static PyObject *completed_event(EventCompleter *self, PyObject *records, PyObject *completed_by)
{
    const FusedApi *api = fused_api_for(self->coalesce);
    PyObject *doc = api != NULL ? fused_doc(api, records, completed_by) : NULL;
    if (doc == NULL && !PyErr_Occurred())
        doc = coalesced_doc(self, records, completed_by);
    if (doc == NULL)
        return NULL;
    PyObject *event = NULL, *key = NULL, *raw = NULL;
    PyObject *want_raw = PyObject_GetAttr(self->assembly, s_raw_records);
    int records_too = want_raw != NULL ? PyObject_IsTrue(want_raw) : -1;
    Py_XDECREF(want_raw);
    if (records_too < 0)
        goto done;
    key = event_key(PyList_GET_ITEM(records, 0));
    if (key == NULL)
        goto done;
    raw = records_too ? event_raw(records) : PyLong_FromSsize_t(PyList_GET_SIZE(records));
    if (raw == NULL)
        goto done;
    event = PyDict_New();
    if (event != NULL && (PyDict_SetItem(event, s_key, key) < 0 ||
                          PyDict_SetItem(event, s_raw, raw) < 0 ||
                          PyDict_SetItem(event, s_doc, doc) < 0))
        Py_CLEAR(event);
done:
    Py_DECREF(doc);
    Py_XDECREF(key);
    Py_XDECREF(raw);
    return event;
}

/* out.append(event) with its recv_ns, and counts["events"] += 1, as _complete does. */
static int deliver(EventCompleter *self, PyObject *event)
{
    PyObject *recv_ns = PyObject_GetAttr(self->assembly, s_recv_ns);
    if (recv_ns == NULL)
        return -1;
    int rc = recv_ns == Py_None ? 0 : PyDict_SetItem(event, s_recv_ns, recv_ns);
    Py_DECREF(recv_ns);
    PyObject *out = rc < 0 ? NULL : PyObject_GetAttr(self->assembly, s_out);
    rc = out != NULL && PyList_Check(out) ? PyList_Append(out, event) : -1;
    if (out != NULL && !PyList_Check(out))
        PyErr_SetString(PyExc_TypeError, "EventCompleter: the assembly's out is not a list");
    Py_XDECREF(out);
    PyObject *counts = rc < 0 ? NULL : PyObject_GetAttr(self->assembly, s_counts);
    rc = counts != NULL ? add_to_item(counts, s_events, 1) : -1;
    Py_XDECREF(counts);
    return rc;
}

static PyObject *completer_call(PyObject *callable, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames)
{
    EventCompleter *self = (EventCompleter *)callable;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "EventCompleter(records, reason) takes 2 arguments");
        return NULL;
    }
    PyObject *records = args[0], *reason = args[1];
    if (!PyList_CheckExact(records) || PyList_GET_SIZE(records) < 2)
        return completer_fallback(self, records, reason); /* a lone EOE is counted there */
    PyObject *completed_by = PyDict_GetItemWithError(self->completed_by, reason);
    if (completed_by == NULL || (completed_by != Py_None && !PyUnicode_CheckExact(completed_by))) {
        if (PyErr_Occurred() && !leave_error_to_fallback())
            return NULL;
        return completer_fallback(self, records, reason);
    }
    PyObject *event = completed_event(self, records, completed_by);
    if (event == NULL) {
        if (PyErr_Occurred() && !leave_error_to_fallback())
            return NULL;
        return completer_fallback(self, records, reason);
    }
    int rc = deliver(self, event);
    Py_DECREF(event);
    if (rc < 0)
        return NULL; /* the assembly itself is broken: as _complete, which raises too */
    Py_RETURN_NONE;
}

static PyObject *completer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *assembly, *coalesce, *fallback, *completed_by;
    static char *kwlist[] = {"assembly", "coalesce", "fallback", "completed_by", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO!:EventCompleter", kwlist, &assembly,
                                     &coalesce, &fallback, &PyDict_Type, &completed_by))
        return NULL;
    if (!PyCallable_Check(coalesce) || !PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "EventCompleter: coalesce and fallback must be callable");
        return NULL;
    }
    EventCompleter *self = (EventCompleter *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(assembly);
    Py_INCREF(coalesce);
    Py_INCREF(fallback);
    Py_INCREF(completed_by);
    self->assembly = assembly;
    self->coalesce = coalesce;
    self->fallback = fallback;
    self->completed_by = completed_by;
    self->vectorcall = completer_call;
    return (PyObject *)self;
}

/* The assembly holds its reassembler, which holds this: a cycle the collector must see. */
static int completer_traverse(EventCompleter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->assembly);
    Py_VISIT(self->coalesce);
    Py_VISIT(self->fallback);
    Py_VISIT(self->completed_by);
    return 0;
}

static int completer_clear(EventCompleter *self)
{
    Py_CLEAR(self->assembly);
    Py_CLEAR(self->coalesce);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->completed_by);
    return 0;
}

static void completer_dealloc(EventCompleter *self)
{
    PyObject_GC_UnTrack(self);
    completer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject EventCompleterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "assembler.native_ecs.EventCompleter",
    .tp_basicsize = sizeof(EventCompleter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "EventCompleter(assembly, coalesce, fallback, completed_by): "
              "Assembly._complete for the events the C coalesce and write_doc take.",
    .tp_new = completer_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(EventCompleter, vectorcall),
    .tp_traverse = (traverseproc)completer_traverse,
    .tp_clear = (inquiry)completer_clear,
    .tp_dealloc = (destructor)completer_dealloc,
};

static int completer_ready(PyObject *module)
{
    if ((s_out = PyUnicode_InternFromString("out")) == NULL ||
        (s_recv_ns = PyUnicode_InternFromString("recv_ns")) == NULL ||
        (s_raw_records = PyUnicode_InternFromString("raw_records")) == NULL ||
        (s_counts = PyUnicode_InternFromString("counts")) == NULL ||
        (s_events = PyUnicode_InternFromString("events")) == NULL ||
        (s_key = PyUnicode_InternFromString("key")) == NULL ||
        (s_raw = PyUnicode_InternFromString("raw")) == NULL ||
        (s_doc = PyUnicode_InternFromString("doc")) == NULL || PyType_Ready(&EventCompleterType) < 0)
        return -1;
    Py_INCREF(&EventCompleterType);
    if (PyModule_AddObject(module, "EventCompleter", (PyObject *)&EventCompleterType) < 0) {
        Py_DECREF(&EventCompleterType);
        return -1;
    }
    return 0;
}

#endif
