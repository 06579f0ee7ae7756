/* receiver.native_lines: auditstream/logline.py's split_log_line() over a chunk of lines, in C.
 *
 * Reference: auditstream/logline.py (split_log_line, parse_type). For the usual line,
 * "[node=NAME ]type=TYPE msg=DATA" with TYPE a name, a number of up to 18 digits or
 * UNKNOWN[number], this makes the same (type, data, node) tuple. Every other line (no
 * type=, no msg=, an unknown type name, data that is not bytes...) is handed to the
 * Python callback, which returns the record or None and counts the line (receiver/stage.py).
 * A record without a node (none, or an empty one) gets the optional third argument, one
 * shared str: live, this host's name (auditstream/hostnode.py); "" by default.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DIGITS 18

static PyObject *number_by_name; /* auditstream.record_types.NUMBER_BY_NAME */
static PyObject *empty_node;

static int load_references(void) {
    if (number_by_name != NULL) return 0;
    PyObject *module = PyImport_ImportModule("auditstream.record_types");
    if (module == NULL) return -1;
    number_by_name = PyObject_GetAttrString(module, "NUMBER_BY_NAME");
    Py_DECREF(module);
    if (number_by_name != NULL && !PyDict_Check(number_by_name)) {
        Py_CLEAR(number_by_name);
        PyErr_SetString(PyExc_TypeError, "NUMBER_BY_NAME is not a dict");
    }
    return number_by_name == NULL ? -1 : 0;
}

/* Decimal digits only, 1-18 of them: the value; else -1. */
static long long digits_value(const char *text, Py_ssize_t size) {
    if (size < 1 || size > MAX_DIGITS) return -1;
    long long value = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        if (text[i] < '0' || text[i] > '9') return -1;
        value = value * 10 + (text[i] - '0');
    }
    return value;
}

/* The record type of a type= token (a new reference); NULL without an error: not known here. */
static PyObject *type_number(const char *token, Py_ssize_t size) {
    long long value = digits_value(token, size);
    if (value < 0 && size > 9 && memcmp(token, "UNKNOWN[", 8) == 0 && token[size - 1] == ']')
        value = digits_value(token + 8, size - 9);
    if (value >= 0) return PyLong_FromLongLong(value);
    if (size > 64) return NULL;
    for (Py_ssize_t i = 0; i < size; i++)
        if ((unsigned char)token[i] >= 0x80) return NULL;
    PyObject *name = PyUnicode_DecodeASCII(token, size, NULL);
    if (name == NULL) return NULL;
    PyObject *number = PyDict_GetItemWithError(number_by_name, name); /* borrowed */
    Py_DECREF(name);
    Py_XINCREF(number);
    return number;
}

static const char *find(const char *start, const char *end, const char *needle, size_t length) {
    if (end - start < (Py_ssize_t)length) return NULL;
    return memmem(start, (size_t)(end - start), needle, length);
}

/* The record of one usual line (a new reference); NULL without an error: not usual. */
static PyObject *split_line(PyObject *line, PyObject **last_node_bytes, PyObject **last_node,
                            PyObject *default_node) {
    const char *start = PyBytes_AS_STRING(line);
    const char *end = start + PyBytes_GET_SIZE(line);
    while (end > start && (end[-1] == '\n' || end[-1] == '\r')) end--;
    PyObject *node = NULL;
    if (end - start >= 5 && memcmp(start, "node=", 5) == 0) {
        const char *space = memchr(start, ' ', (size_t)(end - start));
        if (space == NULL) return NULL;
        Py_ssize_t size = space - (start + 5);
        PyObject *known = *last_node_bytes;
        if (known != NULL && PyBytes_GET_SIZE(known) == size &&
            memcmp(PyBytes_AS_STRING(known), start + 5, (size_t)size) == 0) {
            node = *last_node; /* nodes repeat line after line */
            Py_INCREF(node);
        } else {
            node = PyUnicode_DecodeUTF8(start + 5, size, "replace");
            PyObject *raw = PyBytes_FromStringAndSize(start + 5, size);
            if (node == NULL || raw == NULL) {
                Py_XDECREF(node);
                Py_XDECREF(raw);
                return NULL;
            }
            Py_XSETREF(*last_node_bytes, raw);
            Py_INCREF(node);
            Py_XSETREF(*last_node, node);
        }
        start = space + 1;
        if (size == 0) Py_CLEAR(node); /* "node= ": no node, as in Python */
    }
    const char *msg = NULL;
    if (end - start >= 5 && memcmp(start, "type=", 5) == 0) msg = find(start + 5, end, " msg=", 5);
    PyObject *type = msg == NULL ? NULL : type_number(start + 5, msg - (start + 5));
    if (type == NULL) {
        Py_XDECREF(node);
        return NULL;
    }
    if (node == NULL) node = Py_NewRef(default_node);
    PyObject *data = PyBytes_FromStringAndSize(msg + 5, end - (msg + 5));
    if (node == NULL || data == NULL) {
        Py_DECREF(type);
        Py_XDECREF(node);
        Py_XDECREF(data);
        return NULL;
    }
    PyObject *record = PyTuple_New(3);
    if (record == NULL) {
        Py_DECREF(type);
        Py_DECREF(node);
        Py_DECREF(data);
        return NULL;
    }
    PyTuple_SET_ITEM(record, 0, type);
    PyTuple_SET_ITEM(record, 1, data);
    PyTuple_SET_ITEM(record, 2, node);
    return record;
}

static PyObject *split_lines(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3 || !PyList_Check(args[0]) || !PyCallable_Check(args[1]) ||
        (nargs == 3 && !PyUnicode_CheckExact(args[2]))) {
        PyErr_SetString(PyExc_TypeError,
                        "split_lines(lines: list[bytes], odd_line: callable, node: str = '')");
        return NULL;
    }
    if (load_references() < 0) return NULL;
    PyObject *lines = args[0], *odd_line = args[1];
    PyObject *default_node = nargs == 3 ? args[2] : empty_node;
    PyObject *out = PyList_New(0);
    PyObject *last_node_bytes = NULL, *last_node = NULL;
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        Py_INCREF(line); /* the callback may change the list */
        PyObject *record = PyBytes_CheckExact(line) ? split_line(line, &last_node_bytes, &last_node, default_node) : NULL;
        if (record == NULL && !PyErr_Occurred()) record = PyObject_CallOneArg(odd_line, line);
        Py_DECREF(line);
        if (record == NULL) goto failed;
        if (record != Py_None && PyList_Append(out, record) < 0) {
            Py_DECREF(record);
            goto failed;
        }
        Py_DECREF(record);
    }
    Py_XDECREF(last_node_bytes);
    Py_XDECREF(last_node);
    return out;
failed:
    Py_XDECREF(last_node_bytes);
    Py_XDECREF(last_node);
    Py_DECREF(out);
    return NULL;
}

/* receiver/replaybuffer.py record_serials(): the serial of each (type, data, node) record.
 * The usual kernel header "audit(DIGITS.DIGITS:SERIAL)" at the start, SERIAL of 1-18
 * digits, is read here; a type <= 0 (a marker) is 0; anything else (another header, a
 * longer serial, a record that is not a (int, bytes, str) tuple) goes to slow(record). */
static int ascii_digit(char c) { return c >= '0' && c <= '9'; }

static long long header_serial(const char *data, Py_ssize_t size) {
    Py_ssize_t at = 6, start;
    if (size < 6 || memcmp(data, "audit(", 6) != 0) return -1;
    for (start = at; at < size && ascii_digit(data[at]); at++) {}
    if (at == start || at >= size || data[at] != '.') return -1;
    for (start = ++at; at < size && ascii_digit(data[at]); at++) {}
    if (at == start || at >= size || data[at] != ':') return -1;
    long long serial = 0;
    for (start = ++at; at < size && ascii_digit(data[at]); at++) {
        if (at - start == MAX_DIGITS) return -1;
        serial = serial * 10 + (data[at] - '0');
    }
    if (at == start || at >= size || data[at] != ')') return -1;
    return serial;
}

static PyObject *record_serials(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "record_serials(records, slow: callable)");
        return NULL;
    }
    PyObject *records = PySequence_Fast(args[0], "records must be a sequence");
    if (records == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(records);
    PyObject *out = PyList_New(count);
    if (out == NULL) {
        Py_DECREF(records);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PySequence_Fast_GET_ITEM(records, i), *serial = NULL;
        if (PyTuple_CheckExact(record) && PyTuple_GET_SIZE(record) == 3 &&
            PyLong_CheckExact(PyTuple_GET_ITEM(record, 0)) &&
            PyBytes_CheckExact(PyTuple_GET_ITEM(record, 1))) {
            int overflow = 0;
            long long type = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(record, 0), &overflow);
            if (!overflow && type <= 0) {
                serial = PyLong_FromLong(0);
            } else if (!overflow) {
                PyObject *data = PyTuple_GET_ITEM(record, 1);
                long long value = header_serial(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
                if (value >= 0) serial = PyLong_FromLongLong(value);
            }
        }
        if (serial == NULL && !PyErr_Occurred()) serial = PyObject_CallOneArg(args[1], record);
        if (serial == NULL) {
            Py_DECREF(out);
            Py_DECREF(records);
            return NULL;
        }
        PyList_SET_ITEM(out, i, serial);
    }
    Py_DECREF(records);
    return out;
}

static PyMethodDef methods[] = {
    {"split_lines", (PyCFunction)(void (*)(void))split_lines, METH_FASTCALL,
     "split_lines(lines, odd_line, node='') -> list of (type, data, node); odd_line(line) for "
     "the rest."},
    {"record_serials", (PyCFunction)(void (*)(void))record_serials, METH_FASTCALL,
     "record_serials(records, slow) -> the serial of each record; slow(record) for the rest."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_lines",
                                    "auditstream.logline.split_log_line over many lines, in C.",
                                    -1, methods};

PyMODINIT_FUNC PyInit_native_lines(void) {
    empty_node = PyUnicode_New(0, 0);
    if (empty_node == NULL) return NULL;
    return PyModule_Create(&module);
}
