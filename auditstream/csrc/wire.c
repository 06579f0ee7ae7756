/*
 * auditstream.native_wire: auditstream/wire.py's pack_events_body() in C for a batch whose
 * docs were all written by the assembler's C writer (WrittenDoc), and msgpack.packb for
 * frame bodies of plain values (pack_simple).
 *
 * Reference: auditstream/wire.py (pack_events_body, pack_body) with auditstream/doc_text.py
 * (encode_docs). pack_written_events(events, fields, with_heads, probe) returns (body,
 * docs_json), the bytes the Python function makes: docs_json the docs' texts as one JSON
 * list; body msgpack (use_bin_type) of {"events": the events with "doc": None, **fields,
 * "heads_json": orjson.dumps(heads), "hash_probe": probe} (the last two with heads only),
 * heads as encode_docs makes them. It returns None, and the Python function runs, for any
 * batch it does not take: an event that is not a dict, a doc that is not a WrittenDoc, a
 * value of another type than None, bool, int (64 bits), str (UTF-8), bytes, list, tuple or
 * dict, a field named like one of the body's own keys.
 *
 * msgpack's formats are the smallest msgpack-python's Packer picks: positive fixint, uint8
 * to uint64, negative fixint, int8 to int64; fixstr, str8 to str32; bin8 to bin32;
 * fixarray, array16, array32; fixmap, map16, map32 (the msgpack specification).
 *
 * Why: building the slim events, the heads' lists and Fragments, then msgpack and orjson
 * encoding them, was ~0.9 µs of an event's ~9 µs in the assembler (docs/performance.md,
 * twenty-ninth pass).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "out_buffer.h"

static PyTypeObject *written_doc_type;
static PyObject *s_events, *s_doc, *s_raw, *s_heads_json, *s_hash_probe;

#define MAX_DEPTH 32 /* deeper values: the Python function (msgpack's own limit is 512) */

/* A tag byte and a big-endian integer of width bytes (0, 1, 2, 4 or 8). */
static int put_tagged(Out *b, unsigned char tag, uint64_t value, int width)
{
    unsigned char out[9];
    out[0] = tag;
    for (int i = 0; i < width; i++)
        out[1 + i] = (unsigned char)(value >> (8 * (width - 1 - i)));
    return out_put(b, (const char *)out, 1 + width);
}

/* A length header: fix form below fix_limit, else the 8-bit form (if any), 16, 32 bits. */
static int put_length(Out *b, Py_ssize_t len, unsigned char fix, Py_ssize_t fix_limit,
                      int has8, unsigned char tag8)
{
    if (len < fix_limit)
        return put_tagged(b, (unsigned char)(fix | len), 0, 0);
    if (has8 && len < 256)
        return put_tagged(b, tag8, (uint64_t)len, 1);
    if (len < 65536)
        return put_tagged(b, (unsigned char)(tag8 + 1), (uint64_t)len, 2);
    if ((uint64_t)len <= 0xffffffffULL)
        return put_tagged(b, (unsigned char)(tag8 + 2), (uint64_t)len, 4);
    return 1; /* too long for msgpack: decline */
}

static int put_int(Out *b, PyObject *value)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(value);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1; /* beyond 64 bits: msgpack raises, the Python function copes */
        }
        return put_tagged(b, 0xcf, u, 8);
    }
    if (overflow < 0)
        return 1;
    if (v < -(1LL << 5)) {
        if (v < -(1LL << 15))
            return v < -(1LL << 31) ? put_tagged(b, 0xd3, (uint64_t)v, 8)
                                    : put_tagged(b, 0xd2, (uint64_t)v, 4);
        return v < -(1LL << 7) ? put_tagged(b, 0xd1, (uint64_t)v, 2)
                               : put_tagged(b, 0xd0, (uint64_t)v, 1);
    }
    if (v < (1LL << 7))
        return put_tagged(b, (unsigned char)v, 0, 0); /* fixint, negative ones included */
    if (v < (1LL << 16))
        return v < (1LL << 8) ? put_tagged(b, 0xcc, (uint64_t)v, 1)
                              : put_tagged(b, 0xcd, (uint64_t)v, 2);
    return v < (1LL << 32) ? put_tagged(b, 0xce, (uint64_t)v, 4)
                           : put_tagged(b, 0xcf, (uint64_t)v, 8);
}

static int put_value(Out *b, PyObject *value, int depth);

static int put_str(Out *b, PyObject *text)
{
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &len);
    if (utf8 == NULL) {
        PyErr_Clear(); /* a lone surrogate: msgpack raises, the Python function copes */
        return 1;
    }
    int rc = put_length(b, len, 0xa0, 32, 1, 0xd9);
    return rc != 0 ? rc : out_put(b, utf8, len);
}

static int put_items(Out *b, PyObject *const *items, Py_ssize_t count, int depth)
{
    int rc = put_length(b, count, 0x90, 16, 0, 0xdb); /* 0xdc, 0xdd: tag8 + 1, + 2 */
    for (Py_ssize_t i = 0; rc == 0 && i < count; i++)
        rc = put_value(b, items[i], depth + 1);
    return rc;
}

/* A dict's items; with skip_doc, "doc" as nil (the slim event). */
static int put_map(Out *b, PyObject *dict, int depth, int skip_doc)
{
    int rc = put_length(b, PyDict_GET_SIZE(dict), 0x80, 16, 0, 0xdd); /* 0xde, 0xdf */
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (rc == 0 && PyDict_Next(dict, &pos, &key, &value)) {
        rc = put_value(b, key, depth + 1);
        if (rc == 0)
            rc = skip_doc && key == s_doc ? put_tagged(b, 0xc0, 0, 0)
                                          : put_value(b, value, depth + 1);
    }
    return rc;
}

/* 0 written, 1 declined (a type or size this file does not write), -1 error. */
static int put_value(Out *b, PyObject *value, int depth)
{
    if (depth > MAX_DEPTH)
        return 1;
    if (value == Py_None)
        return put_tagged(b, 0xc0, 0, 0);
    if (value == Py_True || value == Py_False)
        return put_tagged(b, value == Py_True ? 0xc3 : 0xc2, 0, 0);
    if (PyLong_CheckExact(value))
        return put_int(b, value);
    if (PyUnicode_CheckExact(value))
        return put_str(b, value);
    if (PyBytes_CheckExact(value)) {
        int rc = put_length(b, PyBytes_GET_SIZE(value), 0, 0, 1, 0xc4);
        return rc != 0 ? rc : out_put(b, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    }
    if (PyList_CheckExact(value))
        return put_items(b, PySequence_Fast_ITEMS(value), PyList_GET_SIZE(value), depth);
    if (PyTuple_CheckExact(value))
        return put_items(b, PySequence_Fast_ITEMS(value), PyTuple_GET_SIZE(value), depth);
    if (PyDict_CheckExact(value))
        return put_map(b, value, depth, 0);
    return 1;
}

/* WrittenDoc (text, at, until, head) parts; 0 when it is not one of the expected shape. */
static int written_parts(PyObject *doc, PyObject **text, Py_ssize_t *at, Py_ssize_t *until,
                         PyObject **head)
{
    if (!Py_IS_TYPE(doc, written_doc_type) || PyTuple_GET_SIZE(doc) != 4 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(doc, 0)) ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(doc, 1)) ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(doc, 2)) ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(doc, 3)))
        return 0;
    *text = PyTuple_GET_ITEM(doc, 0);
    *head = PyTuple_GET_ITEM(doc, 3);
    *at = PyLong_AsSsize_t(PyTuple_GET_ITEM(doc, 1));
    *until = PyLong_AsSsize_t(PyTuple_GET_ITEM(doc, 2));
    if ((*at == -1 || *until == -1) && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* The size of docs_json; 1 declined (an event or doc this file does not take), -1 error. */
static int docs_size(PyObject *events, Py_ssize_t *size)
{
    Py_ssize_t count = PyList_GET_SIZE(events), total = 2 + (count ? count - 1 : 0);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *event = PyList_GET_ITEM(events, i), *text, *head;
        Py_ssize_t at, until;
        if (!PyDict_CheckExact(event))
            return 1;
        PyObject *doc = PyDict_GetItemWithError(event, s_doc);
        if (doc == NULL)
            return PyErr_Occurred() ? -1 : 1;
        if (!written_parts(doc, &text, &at, &until, &head))
            return 1;
        PyObject *raw = PyDict_GetItemWithError(event, s_raw);
        if (raw == NULL && PyErr_Occurred())
            return -1;
        if (raw != NULL && !PyLong_CheckExact(raw) && !PyList_CheckExact(raw))
            return 1; /* its truth could run Python code while the batch is being read */
        total += PyBytes_GET_SIZE(text);
    }
    *size = total;
    return 0;
}

/* docs_json (of its final size, written once: a batch's docs are ~1 MB) and heads_json. */
static int write_docs(PyObject *events, int with_heads, char *docs, Out *heads)
{
    Py_ssize_t count = PyList_GET_SIZE(events), start = 1;
    *docs = '[';
    if (with_heads && out_put(heads, "[", 1) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *event = PyList_GET_ITEM(events, i), *text, *head;
        Py_ssize_t at, until;
        written_parts(PyDict_GetItem(event, s_doc), &text, &at, &until, &head); /* checked */
        if (i) {
            docs[start++] = ',';
            if (with_heads && out_put(heads, ",", 1) < 0)
                return -1;
        }
        Py_ssize_t end = start + PyBytes_GET_SIZE(text);
        memcpy(docs + start, PyBytes_AS_STRING(text), (size_t)PyBytes_GET_SIZE(text));
        if (with_heads) {
            /* encode_docs: [start, end, at, until, head] for an event with raw records */
            PyObject *raw = PyDict_GetItemWithError(event, s_raw);
            int has_raw = raw == NULL ? (PyErr_Occurred() ? -1 : 0) : PyObject_IsTrue(raw);
            if (has_raw < 0 || out_put(heads, "[", 1) < 0 || put_signed(heads, start) < 0 ||
                out_put(heads, ",", 1) < 0 || put_signed(heads, end) < 0)
                return -1;
            if (has_raw && (out_put(heads, ",", 1) < 0 || put_signed(heads, start + at) < 0 ||
                            out_put(heads, ",", 1) < 0 || put_signed(heads, start + until) < 0 ||
                            out_put(heads, ",", 1) < 0 ||
                            out_put(heads, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head)) < 0))
                return -1;
            if (out_put(heads, "]", 1) < 0)
                return -1;
        }
        start = end;
    }
    docs[start] = ']';
    return with_heads && out_put(heads, "]", 1) < 0 ? -1 : 0;
}

/* The msgpack body; 1 declined, -1 error. */
static int write_body(PyObject *events, PyObject *fields, int with_heads, PyObject *probe,
                      const Out *heads, Out *body)
{
    Py_ssize_t count = PyList_GET_SIZE(events);
    int rc = put_length(body, 1 + PyDict_GET_SIZE(fields) + (with_heads ? 2 : 0), 0x80, 16, 0,
                        0xdd);
    if (rc == 0)
        rc = put_str(body, s_events);
    if (rc == 0)
        rc = put_length(body, count, 0x90, 16, 0, 0xdb);
    for (Py_ssize_t i = 0; rc == 0 && i < count; i++)
        rc = put_map(body, PyList_GET_ITEM(events, i), 1, 1);
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (rc == 0 && PyDict_Next(fields, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return 1;
        if (PyUnicode_Compare(key, s_events) == 0 || PyUnicode_Compare(key, s_heads_json) == 0 ||
            PyUnicode_Compare(key, s_hash_probe) == 0)
            return 1; /* would replace one of the body's own: dict semantics, Python's */
        rc = put_str(body, key);
        if (rc == 0)
            rc = put_value(body, value, 1);
    }
    if (rc == 0 && with_heads) {
        rc = put_str(body, s_heads_json);
        if (rc == 0)
            rc = put_length(body, heads->size, 0, 0, 1, 0xc4);
        if (rc == 0)
            rc = out_put(body, heads->data, heads->size);
        if (rc == 0)
            rc = put_str(body, s_hash_probe);
        if (rc == 0)
            rc = PyLong_CheckExact(probe) ? put_int(body, probe) : 1;
    }
    return rc;
}

static PyObject *py_pack_written_events(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "pack_written_events(events: list, fields: dict, with_heads, probe: int)");
        return NULL;
    }
    int with_heads = PyObject_IsTrue(args[2]);
    if (with_heads < 0)
        return NULL;
    Out heads = {0}, body = {0};
    PyObject *result = NULL, *docs = NULL;
    Py_ssize_t size = 0;
    int rc = docs_size(args[0], &size);
    if (rc == 0 && (docs = PyBytes_FromStringAndSize(NULL, size)) == NULL)
        rc = -1;
    if (rc == 0)
        rc = write_docs(args[0], with_heads, PyBytes_AS_STRING(docs), &heads);
    if (rc == 0)
        rc = write_body(args[0], args[1], with_heads, args[3], &heads, &body);
    if (rc == 0) {
        PyObject *body_bytes = PyBytes_FromStringAndSize(body.data, body.size);
        result = body_bytes ? PyTuple_Pack(2, body_bytes, docs) : NULL;
        Py_XDECREF(body_bytes);
    } else if (rc > 0) {
        result = Py_NewRef(Py_None);
    }
    Py_XDECREF(docs);
    PyMem_Free(heads.data);
    PyMem_Free(body.data);
    return result;
}

/* Kept from call to call (a records batch is ~300 KB): no regrowing it each time. Nothing
 * here runs Python code while it is in use, so no call can reenter. */
static Out kept;

static PyObject *py_pack_simple(PyObject *module, PyObject *value)
{
    kept.size = 0;
    int rc = put_value(&kept, value, 0);
    return rc == 0 ? PyBytes_FromStringAndSize(kept.data, kept.size)
                   : rc > 0 ? Py_NewRef(Py_None) : NULL;
}

static PyMethodDef methods[] = {

    {"pack_simple", py_pack_simple, METH_O,
     "pack_simple(value) -> bytes | None: msgpack.packb(value, use_bin_type=True) for values "
     "of the types this file writes (None: another type, a size or an int it does not)."},
    {"pack_written_events", (PyCFunction)(void (*)(void))py_pack_written_events, METH_FASTCALL,
     "pack_written_events(events, fields, with_heads, probe) -> (body, docs_json) | None: "
     "auditstream.wire.pack_events_body for a batch of written docs."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_wire",
                                    "auditstream.wire.pack_events_body in C (written docs).", -1,
                                    methods};

PyMODINIT_FUNC PyInit_native_wire(void)
{
    if ((s_events = PyUnicode_InternFromString("events")) == NULL ||
        (s_doc = PyUnicode_InternFromString("doc")) == NULL ||
        (s_raw = PyUnicode_InternFromString("raw")) == NULL ||
        (s_heads_json = PyUnicode_InternFromString("heads_json")) == NULL ||
        (s_hash_probe = PyUnicode_InternFromString("hash_probe")) == NULL)
        return NULL;
    PyObject *doc_text = PyImport_ImportModule("auditstream.doc_text");
    PyObject *type = doc_text ? PyObject_GetAttrString(doc_text, "WrittenDoc") : NULL;
    Py_XDECREF(doc_text);
    if (type == NULL)
        return NULL;
    if (!PyType_Check(type)) {
        Py_DECREF(type);
        PyErr_SetString(PyExc_ImportError, "native_wire: doc_text.WrittenDoc is not a class");
        return NULL;
    }
    written_doc_type = (PyTypeObject *)type;
    return PyModule_Create(&module);
}
