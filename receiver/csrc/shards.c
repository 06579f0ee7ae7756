/* receiver.native_shards: a read's records dealt to the assemblers by serial, in C.
 *
 * Reference: receiver/shipper.py, python_deal. Record i goes to shard serials[i] % shards
 * (Python's modulo: never negative), in order, with its serial. With several assemblers
 * the shipper did this a record at a time in Python (~0.3 us a record in replay).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* serial % shards as Python computes it; -1 with an exception. */
static Py_ssize_t shard_of(PyObject *serial, Py_ssize_t shards) {
    int overflow = 0;
    long long value = PyLong_Check(serial) ? PyLong_AsLongLongAndOverflow(serial, &overflow) : -1;
    if (value == -1 && PyErr_Occurred()) return -1;
    if (PyLong_Check(serial) && !overflow) {
        long long shard = value % shards;
        return (Py_ssize_t)(shard < 0 ? shard + shards : shard);
    }
    PyObject *divisor = PyLong_FromSsize_t(shards);
    PyObject *rest = divisor ? PyNumber_Remainder(serial, divisor) : NULL; /* big ints */
    Py_XDECREF(divisor);
    if (rest == NULL) return -1;
    Py_ssize_t shard = PyLong_Check(rest) ? PyLong_AsSsize_t(rest) : -1;
    Py_DECREF(rest);
    if (shard < 0 || shard >= shards) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "deal: a serial is not an int");
        return -1;
    }
    return shard;
}

static PyObject *deal(PyObject *module, PyObject *args) {
    PyObject *records, *serials;
    Py_ssize_t shards;
    if (!PyArg_ParseTuple(args, "O!O!n", &PyList_Type, &records, &PyList_Type, &serials, &shards))
        return NULL;
    if (shards < 1) {
        PyErr_SetString(PyExc_ValueError, "deal: shards must be at least 1");
        return NULL;
    }
    if (PyList_GET_SIZE(records) != PyList_GET_SIZE(serials)) {
        PyErr_SetString(PyExc_ValueError, "deal: as many serials as records");
        return NULL;
    }
    PyObject *parts = PyList_New(shards);
    if (parts == NULL) return NULL;
    for (Py_ssize_t s = 0; s < shards; s++) {
        PyObject *part = Py_BuildValue("[][]");
        if (part == NULL) goto failed;
        PyList_SET_ITEM(parts, s, part);
    }
    /* records and serials are this call's references; appending runs no Python code */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records) && i < PyList_GET_SIZE(serials); i++) {
        PyObject *serial = PyList_GET_ITEM(serials, i);
        Py_ssize_t shard = shard_of(serial, shards);
        if (shard < 0) goto failed;
        PyObject *part = PyList_GET_ITEM(parts, shard);
        if (PyList_Append(PyTuple_GET_ITEM(part, 0), PyList_GET_ITEM(records, i)) < 0 ||
            PyList_Append(PyTuple_GET_ITEM(part, 1), serial) < 0)
            goto failed;
    }
    return parts;
failed:
    Py_DECREF(parts);
    return NULL;
}

static PyMethodDef methods[] = {
    {"deal", deal, METH_VARARGS,
     "deal(records, serials, shards) -> [(records, serials)] per shard, by serial % shards"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "native_shards", NULL, -1, methods};

PyMODINIT_FUNC PyInit_native_shards(void) { return PyModule_Create(&module_def); }
