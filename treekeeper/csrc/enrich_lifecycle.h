/* treekeeper.native_enrich: treekeeper/enrich.py's lifecycle_doc() in C.
 *
 * Included by enrich.c (it uses its Table, slots and interned strings). The Python function
 * stays the reference: where the code here declines (a table, process or container of
 * another type, classes patched, a time outside the years iso_ms_text writes, a ppid that
 * is not an exact int, a host that is not an exact str, an action it does not know) it
 * calls enrich.lifecycle_doc itself, so the caller always gets the doc Python would make.
 */

/* The Python reference (looked up on each decline: a test may replace it). */
static PyObject *python_lifecycle_doc(PyObject *const *args)
{
    PyObject *function = import_attr("treekeeper.enrich", "lifecycle_doc");
    if (function == NULL)
        return NULL;
    PyObject *doc = PyObject_Vectorcall(function, args, 4, NULL);
    Py_DECREF(function);
    return doc;
}

/* _LIFECYCLE_TYPE[action], borrowed; NULL: not one of them. */
static PyObject *lifecycle_type(PyObject *action)
{
    if (!PyUnicode_CheckExact(action))
        return NULL;
    PyObject *const actions[5] = {s_process_started, s_process_exec, s_process_exited,
                                  s_container_first_seen, s_container_gone};
    PyObject *const types[5] = {s_start, s_change, s_end, s_start, s_end};
    for (int i = 0; i < 5; i++) {
        if (action == actions[i] || PyUnicode_Compare(action, actions[i]) == 0)
            return types[i];
    }
    return NULL;
}

/* Set key to a new reference (stolen); -1 on error (the reference is released). */
static int set_new(PyObject *dict, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return -1;
    int failed = PyDict_SetItem(dict, key, value);
    Py_DECREF(value);
    return failed;
}

/* 0 with *out (a new doc), 1 decline (nothing made), -1 error. */
static int make_lifecycle_doc(Table *t, PyObject *action, PyObject *proc, int64_t at_ms,
                              PyObject **out)
{
    *out = NULL;
    PyObject *type = lifecycle_type(action);
    if (type == NULL || Py_TYPE(proc) != process_type)
        return 1;
    int exited = PyUnicode_Compare(action, s_process_exited) == 0;
    PyObject *parent, *host = slot(t->config, config_offsets[CF_HOST]);
    PyObject *ppid = pslot(proc, P_PPID), *container = pslot(proc, P_CONTAINER);
    PyObject *started_obj = pslot(proc, P_STARTED_AT);
    int64_t started = 0;
    const int needed[7] = {P_PID, P_ENTITY_ID, P_EXECUTABLE, P_NAME, P_ARGS, P_CWD, P_EXIT_CODE};
    for (int i = 0; i < 7; i++) {
        if (pslot(proc, needed[i]) == NULL)
            return 1; /* an unset slot: Python raises AttributeError as it should */
    }
    if (table_get(t, pslot(proc, P_PARENT), &parent) < 0 || ppid == NULL ||
        !PyLong_CheckExact(ppid) || host == NULL || !PyUnicode_CheckExact(host) ||
        started_obj == NULL || (started_obj != Py_None && !i64_of(started_obj, &started)) ||
        container == NULL || (container != Py_None && Py_TYPE(container) != container_type))
        return 1;
    PyObject *stamp = iso_ms_text(at_ms), *start = NULL, *end = NULL;
    if (started_obj != Py_None)
        start = iso_ms_text(started);
    if (exited && stamp != NULL)
        end = iso_ms_text(at_ms);
    if (stamp == NULL || (started_obj != Py_None && start == NULL) || (exited && end == NULL)) {
        Py_XDECREF(stamp);
        Py_XDECREF(start);
        Py_XDECREF(end);
        return PyErr_Occurred() ? -1 : 1;
    }
    PyObject *doc = PyDict_New(), *process = PyDict_New();
    if (doc == NULL || process == NULL)
        goto error;
    if (PyDict_SetItem(process, s_pid, pslot(proc, P_PID)) < 0 ||
        PyDict_SetItem(process, s_entity_id, pslot(proc, P_ENTITY_ID)) < 0)
        goto error;
    PyObject *const image_keys[4] = {s_executable, s_name, s_args, s_working_directory};
    const int image_fields[4] = {P_EXECUTABLE, P_NAME, P_ARGS, P_CWD};
    for (int i = 0; i < 4; i++) {
        PyObject *value = pslot(proc, image_fields[i]);
        if (value != Py_None && PyDict_SetItem(process, image_keys[i], value) < 0)
            goto error;
    }
    if (start != NULL) {
        int failed = PyDict_SetItem(process, s_start, start);
        Py_CLEAR(start);
        if (failed)
            goto error;
    }
    if (parent != NULL) {
        if (pslot(parent, P_PID) == NULL || pslot(parent, P_ENTITY_ID) == NULL) {
            PyErr_SetString(PyExc_AttributeError, "Process slot not set");
            goto error;
        }
        PyObject *link = PyDict_New();
        if (link == NULL || PyDict_SetItem(link, s_pid, pslot(parent, P_PID)) < 0 ||
            PyDict_SetItem(link, s_entity_id, pslot(parent, P_ENTITY_ID)) < 0) {
            Py_XDECREF(link);
            goto error;
        }
        if (set_new(process, s_parent, link) < 0)
            goto error;
    } else if (PyObject_IsTrue(ppid)) {
        PyObject *link = PyDict_New();
        if (link == NULL || PyDict_SetItem(link, s_pid, ppid) < 0) {
            Py_XDECREF(link);
            goto error;
        }
        if (set_new(process, s_parent, link) < 0)
            goto error;
    }
    if (exited) {
        int failed = PyDict_SetItem(process, s_end, end);
        Py_CLEAR(end);
        PyObject *code = pslot(proc, P_EXIT_CODE);
        if (failed || code == NULL ||
            (code != Py_None && PyDict_SetItem(process, s_exit_code, code) < 0))
            goto error;
    }
    if (PyDict_SetItem(doc, s_timestamp, stamp) < 0)
        goto error;
    Py_CLEAR(stamp);
    PyObject *event = PyDict_New();
    if (event == NULL)
        goto error;
    if (PyDict_SetItem(event, s_kind, s_event) < 0 ||
        set_new(event, s_category, PyList_New(1)) < 0)
        goto event_error;
    PyObject *category = PyDict_GetItem(event, s_category); /* borrowed, just set */
    Py_INCREF(s_process);
    PyList_SET_ITEM(category, 0, s_process);
    PyObject *types = PyList_New(1);
    if (types == NULL)
        goto event_error;
    Py_INCREF(type);
    PyList_SET_ITEM(types, 0, type);
    if (set_new(event, s_type, types) < 0 || PyDict_SetItem(event, s_action, action) < 0)
        goto event_error;
    if (set_new(doc, s_event, event) < 0)
        goto error;
    if (PyDict_SetItem(doc, s_process, process) < 0)
        goto error;
    Py_CLEAR(process);
    if (PyUnicode_GET_LENGTH(host) > 0) {
        PyObject *named = PyDict_New();
        if (named == NULL || PyDict_SetItem(named, s_name, host) < 0) {
            Py_XDECREF(named);
            goto error;
        }
        if (set_new(doc, s_host, named) < 0)
            goto error;
    }
    if (container != Py_None) {
        PyObject *section = PyDict_New();
        PyObject *id = slot(container, container_offsets[CR_ID]);
        PyObject *runtime = slot(container, container_offsets[CR_RUNTIME]);
        if (section == NULL || id == NULL || runtime == NULL ||
            PyDict_SetItem(section, s_id, id) < 0 ||
            (runtime != Py_None && PyDict_SetItem(section, s_runtime, runtime) < 0)) {
            Py_XDECREF(section);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AttributeError, "ContainerRef slot not set");
            goto error;
        }
        if (set_new(doc, s_container, section) < 0)
            goto error;
    }
    *out = doc;
    return 0;
event_error:
    Py_DECREF(event);
error:
    Py_XDECREF(doc);
    Py_XDECREF(process);
    Py_XDECREF(stamp);
    Py_XDECREF(start);
    Py_XDECREF(end);
    return -1;
}

/* lifecycle_doc(table, action, proc, at_ms) -> dict: enrich.lifecycle_doc's doc. */
static PyObject *py_lifecycle_doc(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "lifecycle_doc(table, action, proc, at_ms)");
        return NULL;
    }
    int64_t at_ms;
    Table t;
    if (!i64_of(args[3], &at_ms) || table_view(args[0], &t) < 0)
        return python_lifecycle_doc(args);
    PyObject *doc;
    int made = make_lifecycle_doc(&t, args[1], args[2], at_ms, &doc);
    table_release(&t);
    if (made < 0)
        return NULL;
    return made == 0 ? doc : python_lifecycle_doc(args);
}

/* Append the ``action`` doc of ``proc`` to ``out`` (made here, or by the Python function
 * where the code here declines): 0, or -1 with an exception. ``at`` is at_ms as an int. */
static int append_lifecycle_doc(Table *t, PyObject *table, PyObject *action, PyObject *proc,
                                PyObject *at, int64_t at_ms, PyObject *out)
{
    PyObject *doc;
    int made = make_lifecycle_doc(t, action, proc, at_ms, &doc);
    if (made < 0)
        return -1;
    if (made > 0) { /* declined (a time it does not write): the Python function */
        PyObject *const call[4] = {table, action, proc, at};
        if ((doc = python_lifecycle_doc(call)) == NULL)
            return -1;
    }
    int failed = PyList_Append(out, doc);
    Py_DECREF(doc);
    return failed;
}
