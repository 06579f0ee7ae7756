/* assembler.native_parse: assembler/parse.py's parse_record() for the usual header, in C.
 *
 * Reference: assembler/parse.py. The usual record starts with Go whitespace, then
 * "audit(SEC.MSEC:SERIAL): " with 1-18 decimal digits each and a serial that fits in 32
 * bits; for that this builds the same Record as the Python fast path. Anything else
 * (another header shape, a serial too big, data that is not bytes) goes to the Python
 * parse_record, which builds the Record or raises ParseError with its precise message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *record_class;     /* assembler.parse.Record */
static PyObject *python_parse;     /* assembler.parse.parse_record */
static PyObject *empty_bytes;

#define MAX_DIGITS 18
#define MAX_SERIAL 4294967295LL

static int go_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

/* Import lazily: assembler.parse may import the module that imports this one. */
static int load_references(void) {
    if (record_class != NULL) return 0;
    PyObject *module = PyImport_ImportModule("assembler.parse");
    if (module == NULL) return -1;
    PyObject *cls = PyObject_GetAttrString(module, "Record");
    PyObject *fallback = PyObject_GetAttrString(module, "parse_record");
    Py_DECREF(module);
    if (cls == NULL || fallback == NULL) {
        Py_XDECREF(cls);
        Py_XDECREF(fallback);
        return -1;
    }
    record_class = cls;
    python_parse = fallback;
    return 0;
}

/* 1-18 digits at *pos, then `stop`: the value, and *pos past `stop`; -1 if not so. */
static long long read_number(const char *data, Py_ssize_t size, Py_ssize_t *pos, char stop) {
    Py_ssize_t at = *pos, start = at;
    long long value = 0;
    while (at < size && data[at] >= '0' && data[at] <= '9') {
        if (at - start == MAX_DIGITS) return -1;
        value = value * 10 + (data[at] - '0');
        at++;
    }
    if (at == start || at >= size || data[at] != stop) return -1;
    *pos = at + 1;
    return value;
}

/* data[start:end] without Go whitespace at either end (a new reference). */
static PyObject *stripped(PyObject *data, const char *bytes, Py_ssize_t start, Py_ssize_t end) {
    while (start < end && go_space((unsigned char)bytes[start])) start++;
    while (end > start && go_space((unsigned char)bytes[end - 1])) end--;
    if (start == end) {
        Py_INCREF(empty_bytes);
        return empty_bytes;
    }
    if (start == 0 && end == PyBytes_GET_SIZE(data)) {
        Py_INCREF(data);
        return data;
    }
    return PyBytes_FromStringAndSize(bytes + start, end - start);
}

static PyObject *trailer_kwnames; /* ("trailer",) */

static PyObject *call_python(PyObject *type, PyObject *data, PyObject *node, int trailer) {
    PyObject *args[4] = {type, data, node, Py_False};
    if (trailer) return PyObject_Vectorcall(python_parse, args, 3, NULL);
    return PyObject_Vectorcall(python_parse, args, 3, trailer_kwnames);
}

/* trailer == 0: a 0x1d is body text (records from the kernel, which appends no trailer). */
static PyObject *parse(PyObject *const *args, Py_ssize_t nargs, int trailer) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, trailer ? "parse_record(type, data, node='')"
                                                 : "parse_kernel_record(type, data, node='')");
        return NULL;
    }
    if (load_references() < 0) return NULL;
    PyObject *type = args[0], *data = args[1];
    PyObject *node = nargs == 3 ? args[2] : NULL;
    PyObject *empty_node = NULL;
    if (node == NULL) {
        empty_node = PyUnicode_New(0, 0);
        if (empty_node == NULL) return NULL;
        node = empty_node;
    }
    PyObject *result = NULL;
    if (!PyBytes_CheckExact(data)) {
        result = call_python(type, data, node, trailer);
        Py_XDECREF(empty_node);
        return result;
    }
    const char *bytes = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data), pos = 0;
    while (pos < size && go_space((unsigned char)bytes[pos])) pos++;
    long long sec = -1, msec = -1, serial = -1;
    if (size - pos > 6 && memcmp(bytes + pos, "audit(", 6) == 0) {
        pos += 6;
        sec = read_number(bytes, size, &pos, '.');
        if (sec >= 0) msec = read_number(bytes, size, &pos, ':');
        if (msec >= 0) serial = read_number(bytes, size, &pos, ')');
    }
    if (serial < 0 || serial > MAX_SERIAL || pos >= size - 1 || bytes[pos] != ':' ||
        bytes[pos + 1] != ' ') {
        result = call_python(type, data, node, trailer);
        Py_XDECREF(empty_node);
        return result;
    }
    pos += 2;
    if (msec >= 1000) { /* Go's time.Unix carries excess milliseconds into seconds */
        sec += msec / 1000;
        msec %= 1000;
    }
    const char *separator = trailer ? memchr(bytes + pos, 0x1d, (size_t)(size - pos)) : NULL;
    PyObject *body, *enriched;
    if (separator == NULL) {
        body = stripped(data, bytes, pos, size);
        enriched = empty_bytes;
        Py_INCREF(enriched);
    } else {
        Py_ssize_t cut = separator - bytes;
        body = stripped(data, bytes, pos, cut);
        enriched = stripped(data, bytes, cut + 1, size);
    }
    PyObject *sec_obj = PyLong_FromLongLong(sec);
    PyObject *msec_obj = PyLong_FromLongLong(msec);
    PyObject *serial_obj = PyLong_FromLongLong(serial);
    if (body != NULL && enriched != NULL && sec_obj != NULL && msec_obj != NULL &&
        serial_obj != NULL) {
        PyObject *fields[8] = {type, node, sec_obj, msec_obj, serial_obj, body, enriched, data};
        result = PyObject_Vectorcall(record_class, fields, 8, NULL);
    }
    Py_XDECREF(body);
    Py_XDECREF(enriched);
    Py_XDECREF(sec_obj);
    Py_XDECREF(msec_obj);
    Py_XDECREF(serial_obj);
    Py_XDECREF(empty_node);
    return result;
}

static PyObject *parse_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return parse(args, nargs, 1);
}

static PyObject *parse_kernel_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return parse(args, nargs, 0);
}

static PyMethodDef methods[] = {
    {"parse_record", (PyCFunction)(void (*)(void))parse_record, METH_FASTCALL,
     "parse_record(type, data, node='') -> Record: assembler.parse.parse_record in C."},
    {"parse_kernel_record", (PyCFunction)(void (*)(void))parse_kernel_record, METH_FASTCALL,
     "parse_kernel_record(type, data, node='') -> Record: parse_record(..., trailer=False)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_parse",
                                    "assembler.parse.parse_record in C.", -1, methods};

PyMODINIT_FUNC PyInit_native_parse(void) {
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    if (empty_bytes == NULL) return NULL;
    trailer_kwnames = Py_BuildValue("(s)", "trailer");
    if (trailer_kwnames == NULL) return NULL;
    return PyModule_Create(&module);
}
