/* treekeeper.native_enrich: treekeeper/enrich.py's lifecycle_doc() in C.
 *
 * Included by enrich.c (it uses its Table, slots and interned strings). The Python function
 * stays the reference: where the code here declines (a table, process or container of
 * another type, classes patched, a time outside the years iso_ms_text writes, a ppid that
 * is not an exact int, a host that is not an exact str, an action it does not know, an unset
 * slot) it calls enrich.lifecycle_doc itself, so the caller always gets the doc Python
 * would make.
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

/* A new dict of ``count`` keys and values, in that order; no value may be NULL (the callers
 * check their slots first). ~0.3 us per doc faster than Py_BuildValue's format strings. */
static PyObject *dict_of(int count, PyObject *const *pairs)
{
    PyObject *dict = PyDict_New();
    for (int i = 0; dict != NULL && i < count; i++)
        if (PyDict_SetItem(dict, pairs[2 * i], pairs[2 * i + 1]) < 0)
            Py_CLEAR(dict);
    return dict;
}

/* A new one-item list. */
static PyObject *list_of(PyObject *item)
{
    PyObject *list = PyList_New(1);
    if (list != NULL)
        PyList_SET_ITEM(list, 0, Py_NewRef(item));
    return list;
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
    PyObject *const container_id =
        container != Py_None ? slot(container, container_offsets[CR_ID]) : Py_None;
    PyObject *const runtime =
        container != Py_None ? slot(container, container_offsets[CR_RUNTIME]) : Py_None;
    if ((parent != NULL && (pslot(parent, P_PID) == NULL || pslot(parent, P_ENTITY_ID) == NULL)) ||
        container_id == NULL || runtime == NULL)
        return 1; /* an unset slot: Python raises AttributeError as it should */
    /* iso_ms(at_ms) is @timestamp and, for an exit, process.end: one text for both */
    PyObject *stamp = iso_ms_text(at_ms), *start = NULL;
    if (stamp != NULL && started_obj != Py_None && (start = iso_ms_text(started)) == NULL)
        Py_CLEAR(stamp);
    if (stamp == NULL)
        return PyErr_Occurred() ? -1 : 1;
    PyObject *doc = NULL, *event = NULL, *process = dict_of(
        2, (PyObject *[]){s_pid, pslot(proc, P_PID), s_entity_id, pslot(proc, P_ENTITY_ID)});
    if (process == NULL)
        goto error;
    PyObject *const image_keys[4] = {s_executable, s_name, s_args, s_working_directory};
    const int image_fields[4] = {P_EXECUTABLE, P_NAME, P_ARGS, P_CWD};
    for (int i = 0; i < 4; i++) {
        PyObject *value = pslot(proc, image_fields[i]);
        if (value != Py_None && PyDict_SetItem(process, image_keys[i], value) < 0)
            goto error;
    }
    if (start != NULL && PyDict_SetItem(process, s_start, start) < 0)
        goto error;
    if (parent != NULL) {
        if (set_steal(process, s_parent,
                      dict_of(2, (PyObject *[]){s_pid, pslot(parent, P_PID), s_entity_id,
                                                pslot(parent, P_ENTITY_ID)})) < 0)
            goto error;
    } else if (PyObject_IsTrue(ppid)) {
        if (set_steal(process, s_parent, dict_of(1, (PyObject *[]){s_pid, ppid})) < 0)
            goto error;
    }
    if (exited) {
        PyObject *code = pslot(proc, P_EXIT_CODE);
        if (PyDict_SetItem(process, s_end, stamp) < 0 ||
            (code != Py_None && PyDict_SetItem(process, s_exit_code, code) < 0))
            goto error;
    }
    event = dict_of(1, (PyObject *[]){s_kind, s_event});
    if (event == NULL || set_steal(event, s_category, list_of(s_process)) < 0 ||
        set_steal(event, s_type, list_of(type)) < 0 || PyDict_SetItem(event, s_action, action) < 0)
        goto error;
    doc = dict_of(3, (PyObject *[]){s_timestamp, stamp, s_event, event, s_process, process});
    if (doc == NULL)
        goto error;
    if (PyUnicode_GET_LENGTH(host) > 0 &&
        set_steal(doc, s_host, dict_of(1, (PyObject *[]){s_name, host})) < 0)
        goto error;
    if (container != Py_None) {
        PyObject *section = dict_of(1, (PyObject *[]){s_id, container_id});
        if (section != NULL && runtime != Py_None &&
            PyDict_SetItem(section, s_runtime, runtime) < 0)
            Py_CLEAR(section);
        if (set_steal(doc, s_container, section) < 0)
            goto error;
    }
    *out = doc;
    Py_DECREF(event);
    Py_DECREF(process);
    Py_DECREF(stamp);
    Py_XDECREF(start);
    return 0;
error:
    Py_XDECREF(doc);
    Py_XDECREF(event);
    Py_XDECREF(process);
    Py_DECREF(stamp);
    Py_XDECREF(start);
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
