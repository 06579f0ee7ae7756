/* assembler.native_parse: assembler/parse.py's parse_record() for the usual header, in C.
 *
 * Reference: assembler/parse.py. The usual record starts with Go whitespace, then
 * "audit(SEC.MSEC:SERIAL): " with 1-18 decimal digits each and a serial that fits in 32
 * bits; for that this builds the same Record as the Python fast path. Anything else
 * (another header shape, a serial too big, data that is not bytes) goes to the Python
 * parse_record, which builds the Record or raises ParseError with its precise message.
 *
 * parse_batch: assembler/batch.py's parse_batch() (a batch of [type, data, node] rows
 * parsed and cut into runs of one event key) with this parser; a row it does not expect
 * (not a list or tuple of three, a type that is not an int) sends the whole batch to the
 * Python function, which then behaves as it does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include "structmember.h"

static PyObject *record_class;     /* assembler.parse.Record */
static PyObject *python_parse;     /* assembler.parse.parse_record */
static PyObject *parse_error;      /* assembler.parse.ParseError */
static PyObject *empty_bytes;

/* Record's slots, in its field order: a Record is filled here as its __init__ would. */
enum { F_TYPE, F_NODE, F_SEC, F_MSEC, F_SERIAL, F_BODY, F_ENRICHED, F_DATA, F_COUNT };
static const char *const field_names[F_COUNT] = {"type", "node",     "sec",      "msec",
                                                 "serial", "body", "enriched", "data"};
static Py_ssize_t field_offsets[F_COUNT];

#define EOE_TYPE 1320
#define LOGIN_TYPE 1006
#define KERNEL_TYPE 2000

#define MAX_DIGITS 18
#define MAX_SERIAL 4294967295LL

static int go_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

static int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset) {
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL) return -1;
    int ok = Py_TYPE(descr) == &PyMemberDescr_Type &&
             ((PyMemberDescrObject *)descr)->d_common.d_type == type &&
             ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
    if (ok) *offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_ImportError, "native_parse: %s.%s is not a slot", type->tp_name, name);
        return -1;
    }
    return 0;
}

/* Import lazily: assembler.parse may import the module that imports this one. */
static int load_references(void) {
    if (record_class != NULL) return 0;
    PyObject *module = PyImport_ImportModule("assembler.parse");
    if (module == NULL) return -1;
    PyObject *cls = PyObject_GetAttrString(module, "Record");
    PyObject *fallback = PyObject_GetAttrString(module, "parse_record");
    PyObject *error = PyObject_GetAttrString(module, "ParseError");
    Py_DECREF(module);
    int ok = cls != NULL && fallback != NULL && error != NULL && PyType_Check(cls);
    for (int i = 0; ok && i < F_COUNT; i++)
        ok = slot_offset((PyTypeObject *)cls, field_names[i], &field_offsets[i]) == 0;
    if (!ok) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ImportError, "native_parse: no Record class");
        Py_XDECREF(cls);
        Py_XDECREF(fallback);
        Py_XDECREF(error);
        return -1;
    }
    record_class = cls;
    python_parse = fallback;
    parse_error = error;
    return 0;
}

/* A Record with these fields (each a new reference, stolen; NULL: fails, all released). */
static PyObject *new_record(PyObject **fields) {
    PyObject *rec = NULL;
    int complete = 1;
    for (int i = 0; i < F_COUNT; i++) complete &= fields[i] != NULL;
    if (complete) {
        PyTypeObject *type = (PyTypeObject *)record_class;
        rec = type->tp_alloc(type, 0);
    }
    if (rec == NULL) {
        for (int i = 0; i < F_COUNT; i++) Py_XDECREF(fields[i]);
        return NULL;
    }
    for (int i = 0; i < F_COUNT; i++) *(PyObject **)((char *)rec + field_offsets[i]) = fields[i];
    return rec;
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

/* The key of a Record the Python parser built (its fields fit: at most 18 digits each). */
static int record_key(PyObject *rec, long long *sec, long long *msec, long long *serial) {
    if (Py_TYPE(rec) != (PyTypeObject *)record_class) return -1;
    PyObject *values[3] = {*(PyObject **)((char *)rec + field_offsets[F_SEC]),
                           *(PyObject **)((char *)rec + field_offsets[F_MSEC]),
                           *(PyObject **)((char *)rec + field_offsets[F_SERIAL])};
    long long *out[3] = {sec, msec, serial};
    for (int i = 0; i < 3; i++) {
        if (values[i] == NULL || !PyLong_Check(values[i])) return -1;
        *out[i] = PyLong_AsLongLong(values[i]);
        if (*out[i] == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
    }
    return 0;
}

/* The last integer made for a key field, reused while the value repeats: an event's
 * records share their serial, and most of a batch shares its second (~2.4 integers
 * fewer to make and free per record). Integers are immutable, so sharing one is safe. */
typedef struct {
    long long value;
    PyObject *object; /* NULL: none yet */
} KeyNumber;

static KeyNumber sec_number, msec_number, serial_number;

static PyObject *key_number(KeyNumber *last, long long value) {
    if (last->object != NULL && last->value == value) return Py_NewRef(last->object);
    PyObject *object = PyLong_FromLongLong(value);
    if (object != NULL) {
        Py_XSETREF(last->object, Py_NewRef(object));
        last->value = value;
    }
    return object;
}

/* One integer per record type, shared by every record of that type: msgpack makes a new one
 * per row, scattered over the heap, and each later read of a record's type (coalesce reads
 * them all) then touched a cold cache line. The first integer seen for a value is kept. */
#define SHARED_TYPES 3000 /* kernel and user-space types are below 3000 */
static PyObject *shared_type[SHARED_TYPES];

static PyObject *type_number(PyObject *type, long long value) {
    if (value <= 0 || value >= SHARED_TYPES) return Py_NewRef(type);
    if (shared_type[value] == NULL) shared_type[value] = Py_NewRef(type);
    return Py_NewRef(shared_type[value]);
}

/* parse.py's trailer_start: the first 0x1d outside a "..." value (an even number of '"'
 * between the body's start and it), NULL: no ENRICHED trailer. */
static const char *trailer_start(const char *body, const char *end) {
    unsigned quotes = 0;
    const char *counted = body;
    const char *separator = memchr(body, 0x1d, (size_t)(end - body));
    while (separator != NULL) {
        for (const char *q = counted; (q = memchr(q, '"', (size_t)(separator - q))) != NULL; q++)
            quotes++;
        if ((quotes & 1) == 0) return separator;
        counted = separator;
        separator = memchr(separator + 1, 0x1d, (size_t)(end - separator - 1));
    }
    return NULL;
}

/* One record (a new reference) and its key; NULL with the Python parser's exception.
 * *keyed is 0 when the key could not be read (the record then starts its own run).
 * trailer == 0: a 0x1d is body text (records from the kernel, which appends no trailer). */
static PyObject *parse_one(PyObject *type, PyObject *data, PyObject *node, int trailer,
                           long long *sec_out, long long *msec_out, long long *serial_out,
                           int *keyed) {
    *keyed = 0;
    PyObject *rec;
    if (!PyBytes_CheckExact(data)) {
        rec = call_python(type, data, node, trailer);
        if (rec != NULL) *keyed = record_key(rec, sec_out, msec_out, serial_out) == 0;
        return rec;
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
        rec = call_python(type, data, node, trailer);
        if (rec != NULL) *keyed = record_key(rec, sec_out, msec_out, serial_out) == 0;
        return rec;
    }
    pos += 2;
    if (msec >= 1000) { /* Go's time.Unix carries excess milliseconds into seconds */
        sec += msec / 1000;
        msec %= 1000;
    }
    const char *separator = trailer ? trailer_start(bytes + pos, bytes + size) : NULL;
    PyObject *fields[F_COUNT];
    if (separator == NULL) {
        fields[F_BODY] = stripped(data, bytes, pos, size);
        fields[F_ENRICHED] = empty_bytes;
        Py_INCREF(empty_bytes);
    } else {
        Py_ssize_t cut = separator - bytes;
        fields[F_BODY] = stripped(data, bytes, pos, cut);
        fields[F_ENRICHED] = stripped(data, bytes, cut + 1, size);
    }
    fields[F_SEC] = key_number(&sec_number, sec);
    fields[F_MSEC] = key_number(&msec_number, msec);
    fields[F_SERIAL] = key_number(&serial_number, serial);
    Py_INCREF(type);
    Py_INCREF(node);
    Py_INCREF(data);
    fields[F_TYPE] = type;
    fields[F_NODE] = node;
    fields[F_DATA] = data;
    rec = new_record(fields);
    if (rec != NULL) {
        *sec_out = sec;
        *msec_out = msec;
        *serial_out = serial;
        *keyed = 1;
    }
    return rec;
}

static PyObject *parse(PyObject *const *args, Py_ssize_t nargs, int trailer) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, trailer ? "parse_record(type, data, node='')"
                                                 : "parse_kernel_record(type, data, node='')");
        return NULL;
    }
    if (load_references() < 0) return NULL;
    PyObject *node = nargs == 3 ? args[2] : NULL;
    PyObject *empty_node = NULL;
    if (node == NULL) {
        empty_node = PyUnicode_New(0, 0);
        if (empty_node == NULL) return NULL;
        node = empty_node;
    }
    long long sec, msec, serial;
    int keyed;
    PyObject *result = parse_one(args[0], args[1], node, trailer, &sec, &msec, &serial, &keyed);
    Py_XDECREF(empty_node);
    return result;
}

static PyObject *parse_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return parse(args, nargs, 1);
}

static PyObject *parse_kernel_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return parse(args, nargs, 0);
}

/* ---- parse_batch --------------------------------------------------------------------- */

static PyObject *python_parse_batch; /* assembler.batch.parse_batch */
static PyObject *unparsed_class;     /* assembler.batch.Unparsed */

static int load_batch_references(void) {
    if (python_parse_batch != NULL) return 0;
    PyObject *module = PyImport_ImportModule("assembler.batch");
    if (module == NULL) return -1;
    PyObject *function = PyObject_GetAttrString(module, "parse_batch");
    PyObject *cls = PyObject_GetAttrString(module, "Unparsed");
    Py_DECREF(module);
    if (function == NULL || cls == NULL) {
        Py_XDECREF(function);
        Py_XDECREF(cls);
        return -1;
    }
    python_parse_batch = function;
    unparsed_class = cls;
    return 0;
}

/* reassembler.completes_alone: no companion records (LOGIN has them; KERNEL has none). */
static int completes_alone(long long type, int overflow) {
    if (overflow) return 1;
    if (type == LOGIN_TYPE) return 0;
    return type < 1300 || type >= 2100 || type == KERNEL_TYPE;
}

/* Append Unparsed(type, data, node, error) to out; error NULL means None. */
static int append_unparsed(PyObject *out, PyObject *type, PyObject *data, PyObject *node,
                           PyObject *error) {
    PyObject *args[4] = {type, data, node, error != NULL ? error : Py_None};
    PyObject *item = PyObject_Vectorcall(unparsed_class, args, 4, NULL);
    if (item == NULL) return -1;
    int failed = PyList_Append(out, item);
    Py_DECREF(item);
    return failed;
}

/* The pending ParseError's message (a new reference), the error cleared; NULL: not one. */
static PyObject *take_parse_error(void) {
    if (!PyErr_ExceptionMatches(parse_error)) return NULL;
    PyObject *kind, *value, *traceback;
    PyErr_Fetch(&kind, &value, &traceback);
    PyErr_NormalizeException(&kind, &value, &traceback);
    PyObject *message = value != NULL ? PyObject_Str(value) : NULL;
    Py_XDECREF(kind);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return message;
}

/* A new run [rec] appended to out (rec's reference taken); the run (borrowed), NULL on error. */
static PyObject *append_run(PyObject *out, PyObject *rec) {
    PyObject *run = PyList_New(1);
    if (run == NULL) {
        Py_DECREF(rec);
        return NULL;
    }
    PyList_SET_ITEM(run, 0, rec);
    int failed = PyList_Append(out, run) < 0;
    Py_DECREF(run); /* out holds it */
    return failed ? NULL : run;
}

static PyObject *delegate_batch(PyObject *recs, int trailer) {
    PyObject *args[2] = {recs, trailer ? Py_True : Py_False};
    return PyObject_Vectorcall(python_parse_batch, args, 2, NULL);
}

static PyObject *parse_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "parse_batch(recs, trailer=True)");
        return NULL;
    }
    int trailer = nargs == 2 ? PyObject_IsTrue(args[1]) : 1;
    if (trailer < 0 || load_references() < 0 || load_batch_references() < 0) return NULL;
    PyObject *recs = args[0];
    if (!PyList_CheckExact(recs) && !PyTuple_CheckExact(recs)) return delegate_batch(recs, trailer);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(recs);
    PyObject **rows = PySequence_Fast_ITEMS(recs);
    /* First pass: only rows this function reads; else Python does the whole batch. */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *row = rows[i];
        if ((!PyList_CheckExact(row) && !PyTuple_CheckExact(row)) ||
            PySequence_Fast_GET_SIZE(row) != 3 ||
            !PyLong_CheckExact(PySequence_Fast_ITEMS(row)[0]))
            return delegate_batch(recs, trailer);
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    PyObject *run = NULL; /* borrowed: the open run, held by out */
    PyObject *run_node = NULL;
    long long run_sec = 0, run_msec = 0, run_serial = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        /* The row's items, held: a row is a list, which a callback could change. */
        PyObject **items = PySequence_Fast_ITEMS(rows[i]);
        PyObject *type = items[0], *data = items[1], *node = items[2];
        int overflow = 0, failed = 0;
        long long type_value = PyLong_AsLongLongAndOverflow(type, &overflow);
        type = overflow ? Py_NewRef(type) : type_number(type, type_value);
        Py_INCREF(data);
        Py_INCREF(node);
        if (overflow < 0 || (overflow == 0 && type_value <= 0)) {
            failed = append_unparsed(out, type, data, node, NULL);
            run = NULL;
            goto next;
        }
        long long sec, msec, serial;
        int keyed;
        PyObject *rec = parse_one(type, data, node, trailer, &sec, &msec, &serial, &keyed);
        if (rec == NULL) {
            PyObject *message = take_parse_error();
            failed = message == NULL || append_unparsed(out, type, data, node, message) < 0;
            Py_XDECREF(message);
            run = NULL;
            goto next;
        }
        if (completes_alone(type_value, overflow)) {
            failed = append_run(out, rec) == NULL;
            run = NULL;
            goto next;
        }
        int same = 0;
        if (run != NULL && keyed && sec == run_sec && msec == run_msec && serial == run_serial) {
            same = PyObject_RichCompareBool(node, run_node, Py_EQ);
            if (same < 0) {
                Py_DECREF(rec);
                failed = 1;
                goto next;
            }
        }
        if (same) {
            failed = PyList_Append(run, rec) < 0;
            Py_DECREF(rec);
        } else {
            PyObject *fresh = append_run(out, rec);
            if (fresh == NULL) {
                failed = 1;
                goto next;
            }
            /* A run without a readable key takes no other record. */
            run = keyed ? fresh : NULL;
            run_node = *(PyObject **)((char *)rec + field_offsets[F_NODE]);
            run_sec = sec;
            run_msec = msec;
            run_serial = serial;
        }
        if (type_value == EOE_TYPE) run = NULL;
    next:
        Py_DECREF(type);
        Py_DECREF(data);
        Py_DECREF(node);
        if (failed) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyMethodDef methods[] = {
    {"parse_record", (PyCFunction)(void (*)(void))parse_record, METH_FASTCALL,
     "parse_record(type, data, node='') -> Record: assembler.parse.parse_record in C."},
    {"parse_kernel_record", (PyCFunction)(void (*)(void))parse_kernel_record, METH_FASTCALL,
     "parse_kernel_record(type, data, node='') -> Record: parse_record(..., trailer=False)."},
    {"parse_batch", (PyCFunction)(void (*)(void))parse_batch, METH_FASTCALL,
     "parse_batch(recs, trailer=True) -> list: assembler.batch.parse_batch in C."},
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
