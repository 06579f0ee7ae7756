/* assembler.native_recent: assembler/recent_keys.py's RecentKeys in C (recent_keys.h), so
 * that assembler/csrc/runs.c adds a completed event's key without a Python call. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "recent_keys.h"

static int recent_init(RecentKeys *r, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t capacity;
    static char *names[] = {"capacity", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n:RecentKeys", names, &capacity))
        return -1;
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity must be >= 1");
        return -1;
    }
    if (r->keys != NULL) {
        PyErr_SetString(PyExc_TypeError, "RecentKeys is initialised once");
        return -1;
    }
    if (capacity > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(PyObject *)) {
        PyErr_NoMemory();
        return -1;
    }
    r->ring = PyMem_Calloc((size_t)capacity, sizeof(PyObject *));
    if (r->ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    r->keys = PyDict_New();
    if (r->keys == NULL)
        return -1;
    r->capacity = capacity;
    r->at = 0;
    return 0;
}

static void recent_dealloc(RecentKeys *r)
{
    if (r->ring != NULL) {
        for (Py_ssize_t i = 0; i < r->capacity; i++)
            Py_XDECREF(r->ring[i]);
        PyMem_Free(r->ring);
    }
    Py_XDECREF(r->keys);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int ready(RecentKeys *r)
{
    if (r->keys == NULL) {
        PyErr_SetString(PyExc_TypeError, "RecentKeys not initialised");
        return 0;
    }
    return 1;
}

static PyObject *recent_add_method(RecentKeys *r, PyObject *key)
{
    if (!ready(r) || recent_add(r, key) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int recent_contains(RecentKeys *r, PyObject *key)
{
    return ready(r) ? PyDict_Contains(r->keys, key) : -1;
}

static Py_ssize_t recent_length(RecentKeys *r)
{
    return ready(r) ? PyDict_GET_SIZE(r->keys) : -1;
}

/* The keys held, oldest first. */
static PyObject *recent_iter(RecentKeys *r)
{
    if (!ready(r))
        return NULL;
    PyObject *keys = PyList_New(0);
    if (keys == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < r->capacity; i++) {
        PyObject *key = r->ring[(r->at + i) % r->capacity];
        if (key != NULL && PyList_Append(keys, key) < 0) {
            Py_DECREF(keys);
            return NULL;
        }
    }
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyMethodDef recent_methods[] = {
    {"add", (PyCFunction)recent_add_method, METH_O,
     "add(key): hold key (a key held already keeps its age); the oldest goes beyond capacity"},
    {NULL, NULL, 0, NULL}};

static PySequenceMethods recent_as_sequence = {
    .sq_length = (lenfunc)recent_length,
    .sq_contains = (objobjproc)recent_contains,
};

static PyTypeObject RecentKeysType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "assembler.native_recent.RecentKeys",
    .tp_basicsize = sizeof(RecentKeys),
    .tp_dealloc = (destructor)recent_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "assembler.recent_keys.RecentKeys in C: the last `capacity` keys added.",
    .tp_methods = recent_methods,
    .tp_as_sequence = &recent_as_sequence,
    .tp_iter = (getiterfunc)recent_iter,
    .tp_init = (initproc)recent_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_recent",
                                    "assembler.recent_keys.RecentKeys in C.", -1, NULL};

PyMODINIT_FUNC PyInit_native_recent(void)
{
    if (PyType_Ready(&RecentKeysType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "RecentKeys", (PyObject *)&RecentKeysType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
