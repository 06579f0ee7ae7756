/* auditstream.native_doc_text: auditstream/doc_text.py's encode_docs() in C, and the tree
 * keeper's side of it: auditstream/wire.py's placing of the heads (place_heads) and the
 * jsonl sink's lines (encode_lines).
 *
 * Reference: auditstream/doc_text.py. The same loop over a batch of events without a
 * Python frame per event: orjson.dumps is called for each doc (twice for a split one:
 * `process` alone, then the doc with a Fragment holding a NUL byte in its place), and
 * docs_json is written once into a bytes object of its final size. orjson's functions
 * and exception come as arguments, so this file needs no orjson headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include "hash_hex.h"

static const char *const HEAD_AUDITD_NAMES[] = {"result"};
static const char *const HEAD_DATA_NAMES[] = {"syscall", "exit", "a0"};
/* The keys as interned str, made once: PyDict_GetItemString makes and hashes a str per call. */
static PyObject *HEAD_AUDITD[1], *HEAD_DATA[3];
static PyObject *KEY_PROCESS, *KEY_AUDITD, *KEY_RECORDS, *KEY_CONTAINER, *KEY_DATA, *KEY_TIMESTAMP;
static PyObject *KEY_RECORD_HASHES;
static PyObject *KEY_DOC, *KEY_RAW, *NUL_BYTES, *KEY_DOC_TEXT;
static const char PROCESS_KEY[] = "\"process\":"; /* doc_text.PROCESS_KEY */

static int init_keys(void) {
    for (int i = 0; i < 1; i++)
        if ((HEAD_AUDITD[i] = PyUnicode_InternFromString(HEAD_AUDITD_NAMES[i])) == NULL) return -1;
    for (int i = 0; i < 3; i++)
        if ((HEAD_DATA[i] = PyUnicode_InternFromString(HEAD_DATA_NAMES[i])) == NULL) return -1;
    KEY_PROCESS = PyUnicode_InternFromString("process");
    KEY_AUDITD = PyUnicode_InternFromString("auditd");
    KEY_RECORDS = PyUnicode_InternFromString("records");
    KEY_RECORD_HASHES = PyUnicode_InternFromString("record_hashes");
    KEY_CONTAINER = PyUnicode_InternFromString("container");
    KEY_DATA = PyUnicode_InternFromString("data");
    KEY_TIMESTAMP = PyUnicode_InternFromString("@timestamp");
    KEY_DOC = PyUnicode_InternFromString("doc");
    KEY_RAW = PyUnicode_InternFromString("raw");
    KEY_DOC_TEXT = PyUnicode_InternFromString("doc_text");
    NUL_BYTES = PyBytes_FromStringAndSize("", 1);
    return KEY_PROCESS && KEY_AUDITD && KEY_RECORDS && KEY_RECORD_HASHES && KEY_CONTAINER &&
                   KEY_DATA && KEY_TIMESTAMP && KEY_DOC && KEY_RAW && NUL_BYTES && KEY_DOC_TEXT
               ? 0
               : -1;
}

/* A borrowed value or NULL (absent); NULL with an exception set on error. */
static PyObject *item(PyObject *dict, PyObject *key) { return PyDict_GetItemWithError(dict, key); }

/* {name: source[name] for name in names if name in source} in that order; NULL on error. */
static PyObject *pick(PyObject *source, PyObject *const *names, size_t count) {
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    for (size_t i = 0; i < count; i++) {
        PyObject *value = item(source, names[i]);
        if ((value == NULL && PyErr_Occurred()) ||
            (value != NULL && PyDict_SetItem(out, names[i], value) < 0)) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* hashes_text(hash(r) for r in records if isinstance(r, str)): dedupe's fingerprints
 * (doc_text.py), 16 hex digits each (hash_hex.h). */
static PyObject *record_hashes(PyObject *records) {
    Py_ssize_t count = PyList_GET_SIZE(records), kept = 0;
    char stack[8 * HASH_HEX_DIGITS];
    char *text = count <= 8 ? stack : PyMem_Malloc((size_t)count * HASH_HEX_DIGITS);
    if (text == NULL) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyUnicode_Check(record)) continue;
        Py_hash_t hash = PyObject_Hash(record);
        if (hash == -1) {
            if (text != stack) PyMem_Free(text);
            return NULL;
        }
        hash_hex_write(text + kept++ * HASH_HEX_DIGITS, (int64_t)hash);
    }
    PyObject *out = PyUnicode_DecodeASCII(text, kept * HASH_HEX_DIGITS, NULL);
    if (text != stack) PyMem_Free(text);
    return out;
}

/* The head: process's place (None), auditd's result, record hashes and data's
 * syscall/exit/a0, and @timestamp. records is the doc's non-empty list (splittable). */
static PyObject *head_of(PyObject *doc, PyObject *auditd, PyObject *records) {
    PyObject *head_auditd = pick(auditd, HEAD_AUDITD, 1);
    if (head_auditd == NULL) return NULL;
    PyObject *hashes = record_hashes(records);
    int failed = hashes == NULL || PyDict_SetItem(head_auditd, KEY_RECORD_HASHES, hashes) < 0;
    Py_XDECREF(hashes);
    if (failed) {
        Py_DECREF(head_auditd);
        return NULL;
    }
    PyObject *data = item(auditd, KEY_DATA);
    if (data != NULL && PyDict_CheckExact(data)) {
        PyObject *head_data = pick(data, HEAD_DATA, 3);
        int failed = head_data == NULL || PyDict_SetItem(head_auditd, KEY_DATA, head_data) < 0;
        Py_XDECREF(head_data);
        if (failed) {
            Py_DECREF(head_auditd);
            return NULL;
        }
    } else if (data == NULL && PyErr_Occurred()) {
        Py_DECREF(head_auditd);
        return NULL;
    }
    PyObject *head = PyDict_New();
    if (head == NULL || PyDict_SetItem(head, KEY_PROCESS, Py_None) < 0 ||
        PyDict_SetItem(head, KEY_AUDITD, head_auditd) < 0) {
        Py_XDECREF(head);
        Py_DECREF(head_auditd);
        return NULL;
    }
    Py_DECREF(head_auditd);
    PyObject *timestamp = item(doc, KEY_TIMESTAMP);
    if ((timestamp == NULL && PyErr_Occurred()) ||
        (timestamp != NULL && PyDict_SetItem(head, KEY_TIMESTAMP, timestamp) < 0)) {
        Py_DECREF(head);
        return NULL;
    }
    return head;
}

/* What a doc that may travel split has (borrowed; doc_text.splittable). */
typedef struct {
    PyObject *process, *auditd, *records;
} Splittable;

/* 1 with found filled when the doc may travel split; 0 when not; -1 on error. */
static int splittable(PyObject *doc, Splittable *found) {
    PyObject *process = item(doc, KEY_PROCESS);
    if (process == NULL || !PyDict_CheckExact(process)) return PyErr_Occurred() ? -1 : 0;
    if (item(doc, KEY_CONTAINER) != NULL) return 0;
    if (PyErr_Occurred()) return -1;
    PyObject *auditd = item(doc, KEY_AUDITD);
    if (auditd == NULL || !PyDict_CheckExact(auditd)) return PyErr_Occurred() ? -1 : 0;
    PyObject *records = item(auditd, KEY_RECORDS);
    if (records == NULL || !PyList_CheckExact(records) || PyList_GET_SIZE(records) == 0)
        return PyErr_Occurred() ? -1 : 0;
    *found = (Splittable){process, auditd, records};
    return 1;
}

/* One event's doc: its text, and for a split doc the mark's offset in it, process's text
 * and the head. */
typedef struct {
    PyObject *text;  /* NULL: refused, "null" */
    PyObject *value; /* process's text, or NULL: not split (or written) */
    PyObject *head;  /* the head (split and written docs only) */
    Py_ssize_t at;   /* the mark's offset in text; a written doc's process value's */
    Py_ssize_t until; /* a written doc's: the end of process's value in text */
} Piece;

typedef struct {
    PyObject *dumps, *fragment, *encode_error, *mark;
    PyTypeObject *written; /* doc_text.WrittenDoc */
} Orjson;

/* The one NUL byte in text (the mark), or -1 when there is none or more than one. */
static Py_ssize_t mark_at(PyObject *text) {
    const char *bytes = PyBytes_AS_STRING(text), *end = bytes + PyBytes_GET_SIZE(text);
    const char *at = memchr(bytes, 0, (size_t)(end - bytes));
    if (at == NULL || memchr(at + 1, 0, (size_t)(end - at - 1)) != NULL) return -1;
    return at - bytes;
}

/* Encode a split doc and its head into piece: 1 done, 0 not split after all, -1 error
 * (maybe JSON's). */
static int encode_split(const Orjson *json, PyObject *doc, const Splittable *found, Piece *piece) {
    PyObject *process = found->process;
    PyObject *value = PyObject_CallOneArg(json->dumps, process);
    if (value == NULL) return -1;
    Py_INCREF(process); /* the doc's reference goes while the mark is in its place */
    if (PyDict_SetItem(doc, KEY_PROCESS, json->mark) < 0) {
        Py_DECREF(process);
        Py_DECREF(value);
        return -1;
    }
    PyObject *text = PyObject_CallOneArg(json->dumps, doc);
    int restored = PyDict_SetItem(doc, KEY_PROCESS, process);
    Py_DECREF(process);
    if (text == NULL || restored < 0) {
        Py_XDECREF(text);
        Py_DECREF(value);
        return -1;
    }
    Py_ssize_t at = mark_at(text);
    if (at < 0) {
        Py_DECREF(text);
        Py_DECREF(value);
        return 0;
    }
    PyObject *head = head_of(doc, found->auditd, found->records);
    if (head == NULL) {
        Py_DECREF(text);
        Py_DECREF(value);
        return -1;
    }
    piece->text = text;
    piece->value = value;
    piece->head = head;
    piece->at = at;
    return 1;
}

/* [start, end] or [start, end, at, until, head] for a piece at start in docs_json. */
static PyObject *head_entry(const Piece *piece, Py_ssize_t start, Py_ssize_t end) {
    if (piece->value == NULL && piece->head != NULL) /* written */
        return Py_BuildValue("[nnnnO]", start, end, start + piece->at, start + piece->until,
                             piece->head);
    if (piece->value == NULL) return Py_BuildValue("[nn]", start, end);
    Py_ssize_t at = start + piece->at;
    return Py_BuildValue("[nnnnO]", start, end, at, at + PyBytes_GET_SIZE(piece->value),
                         piece->head);
}

static Py_ssize_t piece_size(const Piece *piece) {
    if (piece->text == NULL) return 4; /* null */
    Py_ssize_t size = PyBytes_GET_SIZE(piece->text);
    return piece->value == NULL ? size : size - 1 + PyBytes_GET_SIZE(piece->value);
}

static char *write_piece(char *out, const Piece *piece) {
    if (piece->text == NULL) {
        memcpy(out, "null", 4);
        return out + 4;
    }
    const char *text = PyBytes_AS_STRING(piece->text);
    Py_ssize_t size = PyBytes_GET_SIZE(piece->text);
    if (piece->value == NULL) {
        memcpy(out, text, (size_t)size);
        return out + size;
    }
    Py_ssize_t value_size = PyBytes_GET_SIZE(piece->value);
    memcpy(out, text, (size_t)piece->at);
    memcpy(out + piece->at, PyBytes_AS_STRING(piece->value), (size_t)value_size);
    memcpy(out + piece->at + value_size, text + piece->at + 1, (size_t)(size - piece->at - 1));
    return out + size - 1 + value_size;
}

/* refused[index] = why (a new reference, taken; NULL: an error is set). 0, or -1 on error. */
static int refuse(PyObject *refused, Py_ssize_t index, PyObject *why) {
    PyObject *key = why != NULL ? PyLong_FromSsize_t(index) : NULL;
    int failed = key == NULL || PyDict_SetItem(refused, key, why) < 0;
    Py_XDECREF(why);
    Py_XDECREF(key);
    return failed ? -1 : 0;
}

/* refused[index] = str(the pending JSON error), which is consumed. */
static int refuse_json(PyObject *refused, Py_ssize_t index) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    PyObject *why = value != NULL ? PyObject_Str(value) : PyUnicode_FromString("");
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return refuse(refused, index, why);
}

/* refused[index] = why a doc that is not a dict cannot travel as JSON. */
static int refuse_shape(PyObject *refused, Py_ssize_t index, PyObject *doc) {
    if (doc == NULL || doc == Py_None)
        return refuse(refused, index, PyUnicode_FromString("doc is missing"));
    PyObject *name = PyType_GetName(Py_TYPE(doc));
    PyObject *why = name != NULL ? PyUnicode_FromFormat("doc is %U", name) : NULL;
    Py_XDECREF(name);
    return refuse(refused, index, why);
}

/* Whether the event carries its raw records (a head travels only then): 1, 0, or -1. */
static int has_raw_records(PyObject *event) {
    PyObject *raw = item(event, KEY_RAW);
    return raw == NULL ? (PyErr_Occurred() ? -1 : 0) : PyObject_IsTrue(raw);
}

/* A WrittenDoc (text, at, until, head) into piece; its head as a Fragment when the event
 * has raw records and heads are asked for (doc_text.encode_docs). 0, or -1 on error. */
static int encode_written(const Orjson *json, PyObject *event, PyObject *doc, int with_heads,
                          Piece *piece) {
    if (PyTuple_GET_SIZE(doc) != 4 || !PyBytes_CheckExact(PyTuple_GET_ITEM(doc, 0)) ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(doc, 1)) ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(doc, 2)) ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(doc, 3))) {
        PyErr_SetString(PyExc_TypeError, "a WrittenDoc that is not (bytes, int, int, bytes)");
        return -1;
    }
    PyObject *text = PyTuple_GET_ITEM(doc, 0), *head = PyTuple_GET_ITEM(doc, 3);
    Py_ssize_t at = PyLong_AsSsize_t(PyTuple_GET_ITEM(doc, 1));
    Py_ssize_t until = PyLong_AsSsize_t(PyTuple_GET_ITEM(doc, 2));
    if ((at == -1 || until == -1) && PyErr_Occurred()) return -1;
    if (with_heads) {
        int has_raw = has_raw_records(event);
        if (has_raw < 0) return -1;
        if (has_raw && (piece->head = PyObject_CallOneArg(json->fragment, head)) == NULL)
            return -1;
    }
    piece->text = Py_NewRef(text);
    piece->at = at;
    piece->until = until;
    return 0;
}

/* One event: its slim copy appended, its piece filled (or refused). 0, or -1 on error. */
static int encode_event(const Orjson *json, PyObject *event, Py_ssize_t index, int with_heads,
                        PyObject *slim, PyObject *refused, Piece *piece) {
    if (!PyDict_Check(event)) {
        PyErr_SetString(PyExc_TypeError, "an event that is not a dict");
        return -1;
    }
    PyObject *slim_event = PyDict_Copy(event);
    if (slim_event == NULL) return -1;
    int appended = PyList_Append(slim, slim_event);
    Py_DECREF(slim_event);
    if (appended < 0) return -1;
    PyObject *doc = item(event, KEY_DOC);
    if (doc == NULL && PyErr_Occurred()) return -1;
    if (doc != NULL && Py_IS_TYPE(doc, json->written)) {
        int written = encode_written(json, event, doc, with_heads, piece);
        return written < 0 ? -1 : PyDict_SetItem(PyList_GET_ITEM(slim, index), KEY_DOC, Py_None);
    }
    if (doc == NULL || !PyDict_CheckExact(doc)) return refuse_shape(refused, index, doc);
    int split = 0;
    if (with_heads) {
        Splittable found;
        int has_raw = has_raw_records(event);
        if (has_raw < 0) return -1;
        if (has_raw && (split = splittable(doc, &found)) > 0) {
            /* dumps may run Python code: hold what found borrows from the doc */
            PyObject *held[] = {doc, found.process, found.auditd, found.records};
            for (size_t i = 0; i < 4; i++) Py_INCREF(held[i]);
            split = encode_split(json, doc, &found, piece);
            for (size_t i = 0; i < 4; i++) Py_DECREF(held[i]);
        }
        if (split < 0) {
            if (!PyErr_ExceptionMatches(json->encode_error)) return -1;
            return refuse_json(refused, index);
        }
    }
    if (split == 0) {
        piece->text = PyObject_CallOneArg(json->dumps, doc);
        if (piece->text == NULL) {
            if (!PyErr_ExceptionMatches(json->encode_error)) return -1;
            return refuse_json(refused, index);
        }
    }
    /* keeps the key's place in the dict */
    return PyDict_SetItem(PyList_GET_ITEM(slim, index), KEY_DOC, Py_None);
}

static void free_pieces(Piece *pieces, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_XDECREF(pieces[i].text);
        Py_XDECREF(pieces[i].value);
        Py_XDECREF(pieces[i].head);
    }
    PyMem_Free(pieces);
}

/* docs_json of the pieces and, with heads, the list of head entries into *heads. */
static PyObject *join_pieces(const Piece *pieces, Py_ssize_t count, PyObject *heads) {
    Py_ssize_t total = 2 + (count > 0 ? count - 1 : 0);
    for (Py_ssize_t i = 0; i < count; i++) total += piece_size(&pieces[i]);
    PyObject *docs_json = PyBytes_FromStringAndSize(NULL, total);
    if (docs_json == NULL) return NULL;
    char *out = PyBytes_AS_STRING(docs_json);
    *out++ = '[';
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i) *out++ = ',';
        Py_ssize_t start = out - PyBytes_AS_STRING(docs_json);
        out = write_piece(out, &pieces[i]);
        if (heads == NULL) continue;
        PyObject *entry = pieces[i].text == NULL
                              ? Py_NewRef(Py_None)
                              : head_entry(&pieces[i], start, out - PyBytes_AS_STRING(docs_json));
        if (entry == NULL || PyList_Append(heads, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(docs_json);
            return NULL;
        }
        Py_DECREF(entry);
    }
    *out = ']';
    return docs_json;
}

static PyObject *encode_docs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1]) ||
        !PyType_Check(args[2]) || !PyType_Check(args[3]) ||
        !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type) || !PyList_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "encode_docs(dumps, Fragment, JSONEncodeError, "
                                         "WrittenDoc, events: list, with_heads)");
        return NULL;
    }
    int with_heads = PyObject_IsTrue(args[5]);
    if (with_heads < 0) return NULL;
    Orjson json = {args[0], args[1], args[2], NULL, (PyTypeObject *)args[3]};
    PyObject *events = args[4];
    Py_ssize_t count = PyList_GET_SIZE(events);
    Piece *pieces = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Piece));
    PyObject *slim = PyList_New(0), *refused = PyDict_New();
    PyObject *heads = with_heads ? PyList_New(0) : NULL, *docs_json = NULL, *result = NULL;
    json.mark = PyObject_CallOneArg(json.fragment, NUL_BYTES);
    if (pieces == NULL || slim == NULL || refused == NULL ||
        (with_heads && heads == NULL) || json.mark == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        /* the list's own reference: a dumps call cannot drop an event meanwhile */
        PyObject *event = Py_NewRef(PyList_GET_ITEM(events, i));
        int failed = encode_event(&json, event, i, with_heads, slim, refused, &pieces[i]);
        Py_DECREF(event);
        if (failed < 0) goto done;
    }
    docs_json = join_pieces(pieces, count, heads);
    if (docs_json != NULL)
        result = PyTuple_Pack(4, docs_json, heads != NULL ? heads : Py_None, slim, refused);
done:
    if (pieces != NULL) free_pieces(pieces, count);
    Py_XDECREF(json.mark);
    Py_XDECREF(slim);
    Py_XDECREF(refused);
    Py_XDECREF(heads);
    Py_XDECREF(docs_json);
    return result;
}

/* -- place_heads: wire.events_with_heads's loop over _place --------------------------- */

/* A copy of a decoded JSON value whose dicts and lists are its own (their str, int,
 * float, bool and None are shared: immutable). NULL with an exception. */
static PyObject *fresh_copy(PyObject *value) {
    if (PyDict_CheckExact(value)) {
        PyObject *out = PyDict_Copy(value), *key, *inner;
        Py_ssize_t pos = 0;
        while (out != NULL && PyDict_Next(value, &pos, &key, &inner)) {
            if (!PyDict_CheckExact(inner) && !PyList_CheckExact(inner)) continue;
            PyObject *copy = fresh_copy(inner);
            if (copy == NULL || PyDict_SetItem(out, key, copy) < 0) Py_CLEAR(out);
            Py_XDECREF(copy);
        }
        return out;
    }
    if (PyList_CheckExact(value)) {
        Py_ssize_t count = PyList_GET_SIZE(value);
        PyObject *out = PyList_New(count);
        for (Py_ssize_t i = 0; out != NULL && i < count; i++) {
            PyObject *inner = PyList_GET_ITEM(value, i);
            int nested = PyDict_CheckExact(inner) || PyList_CheckExact(inner);
            PyObject *copy = nested ? fresh_copy(inner) : Py_NewRef(inner);
            if (copy == NULL) Py_CLEAR(out);
            else PyList_SET_ITEM(out, i, copy);
        }
        return out;
    }
    return Py_NewRef(value);
}

/* Where an event's process text is in docs_json; same: the index of the event before it
 * whose text is the same bytes (its run's first), or -1. */
typedef struct {
    Py_ssize_t at, until, same;
} Span;

/* The processes of the spans (until > 0): the first of each run of equal texts decoded by
 * one loads of a JSON list of them (a loads per text cost more than decoding a short
 * one), the others copies of it (fresh_copy: the tree keeper adds to each event's own).
 * 1; 0 when that is no list of as many objects (Python's _place says why); -1 with an
 * exception. Each text is a span the assembler wrote as one object, from "{" to "}";
 * only a frame altered on its way could make two of them one. */
static int decode_processes(PyObject *loads, const char *docs, const Span *spans,
                            PyObject **processes, Py_ssize_t count) {
    Py_ssize_t firsts = 0, size = 1;
    for (Py_ssize_t i = 0; i < count; i++)
        if (spans[i].until > 0 && spans[i].same < 0) {
            firsts++;
            size += spans[i].until - spans[i].at + 1;
        }
    if (firsts == 0) return 1;
    PyObject *list_text = PyBytes_FromStringAndSize(NULL, size);
    if (list_text == NULL) return -1;
    char *out = PyBytes_AS_STRING(list_text);
    *out++ = '[';
    for (Py_ssize_t i = 0; i < count; i++)
        if (spans[i].until > 0 && spans[i].same < 0) {
            memcpy(out, docs + spans[i].at, (size_t)(spans[i].until - spans[i].at));
            out += spans[i].until - spans[i].at;
            *out++ = ',';
        }
    out[-1] = ']';
    PyObject *values = PyObject_CallOneArg(loads, list_text);
    Py_DECREF(list_text);
    if (values == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
        PyErr_Clear(); /* JSONDecodeError */
        return 0;
    }
    int rc = PyList_CheckExact(values) && PyList_GET_SIZE(values) == firsts;
    for (Py_ssize_t i = 0; rc && i < firsts; i++)
        rc = PyDict_CheckExact(PyList_GET_ITEM(values, i));
    for (Py_ssize_t i = 0, j = 0; rc > 0 && i < count; i++) {
        if (spans[i].until == 0) continue;
        if (spans[i].same < 0) processes[i] = Py_NewRef(PyList_GET_ITEM(values, j++));
        else if ((processes[i] = fresh_copy(processes[spans[i].same])) == NULL) rc = -1;
    }
    Py_DECREF(values);
    return rc;
}

/* The text (new) of the entry [start, end, at, until, head] and its process's span: 1; 0
 * when it is not of that shape or does not fit (Python's _place then says why); -1 with an
 * exception. */
static int place_entry(PyObject *entry, const char *docs, Py_ssize_t size, PyObject **text,
                       Span *span) {
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 5) return 0;
    Py_ssize_t at[4]; /* start, end, at, until */
    for (int i = 0; i < 4; i++) {
        PyObject *number = PyList_GET_ITEM(entry, i);
        if (!PyLong_CheckExact(number)) return 0;
        at[i] = PyLong_AsSsize_t(number);
        if (at[i] == -1 && PyErr_Occurred()) {
            PyErr_Clear(); /* beyond Py_ssize_t: Python's comparisons refuse it */
            return 0;
        }
    }
    Py_ssize_t start = at[0], end = at[1], value = at[2], until = at[3];
    Py_ssize_t key_size = (Py_ssize_t)sizeof PROCESS_KEY - 1;
    if (!(0 < start && start < end && end < size) || docs[start] != '{' || docs[end - 1] != '}' ||
        !(start < value && value < until && until < end) || value < key_size ||
        memcmp(docs + value - key_size, PROCESS_KEY, (size_t)key_size) != 0 ||
        docs[value] != '{' || docs[until - 1] != '}')
        return 0;
    PyObject *found = PyList_GET_ITEM(entry, 4);
    if (!PyDict_CheckExact(found)) return 0;
    PyObject *place = item(found, KEY_PROCESS);
    if (place == NULL) return PyErr_Occurred() ? -1 : 0;
    if (place != Py_None) return 0;
    *span = (Span){value, until, -1};
    PyObject *before = PyBytes_FromStringAndSize(docs + start, value - start);
    PyObject *after = before ? PyBytes_FromStringAndSize(docs + until, end - until) : NULL;
    *text = after ? PyTuple_Pack(2, before, after) : NULL;
    Py_XDECREF(before);
    Py_XDECREF(after);
    return *text ? 1 : -1;
}

/* place_heads(events, heads, docs_json, loads): each event of a head gets it as "doc",
 * with its process decoded in the head's place, and its text as "doc_text"; True. False,
 * having changed nothing, when any entry is not a whole fitting [start, end, at, until,
 * head] or null (the Python loop then places or refuses them). loads is orjson.loads. */
static PyObject *place_heads(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1]) ||
        !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "place_heads(events: list, heads: list, docs_json: bytes, loads)");
        return NULL;
    }
    PyObject *events = args[0], *heads = args[1], *loads = args[3];
    Py_ssize_t count = PyList_GET_SIZE(events);
    if (PyList_GET_SIZE(heads) != count) Py_RETURN_FALSE;
    for (Py_ssize_t i = 0; i < count; i++)
        if (!PyDict_CheckExact(PyList_GET_ITEM(events, i))) Py_RETURN_FALSE;
    /* texts[i], then processes[i] at texts[count + 1 + i] */
    PyObject **texts = PyMem_Calloc(2 * (size_t)count + 2, sizeof(PyObject *));
    Span *spans = PyMem_Calloc((size_t)count + 1, sizeof(Span));
    if (texts == NULL || spans == NULL) {
        PyMem_Free(texts);
        PyMem_Free(spans);
        return PyErr_NoMemory();
    }
    PyObject **processes = texts + count + 1;
    const char *docs = PyBytes_AS_STRING(args[2]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[2]);
    PyObject *result = Py_False;
    Py_ssize_t run = -1; /* the first event of the run of equal process texts so far */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(heads, i);
        if (entry == Py_None) continue;
        int placed = place_entry(entry, docs, size, &texts[i], &spans[i]);
        if (placed <= 0) {
            result = placed < 0 ? NULL : Py_False;
            goto done;
        }
        /* A process's events come together: the text before is the one to compare with */
        Py_ssize_t length = spans[i].until - spans[i].at;
        if (run >= 0 && spans[run].until - spans[run].at == length &&
            memcmp(docs + spans[run].at, docs + spans[i].at, (size_t)length) == 0)
            spans[i].same = run;
        else
            run = i;
    }
    int decoded = decode_processes(loads, docs, spans, processes, count);
    if (decoded <= 0) {
        result = decoded < 0 ? NULL : Py_False;
        goto done;
    }
    result = Py_True;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (texts[i] == NULL) continue;
        PyObject *event = PyList_GET_ITEM(events, i);
        PyObject *head = PyList_GET_ITEM(PyList_GET_ITEM(heads, i), 4); /* checked above */
        if (PyDict_SetItem(head, KEY_PROCESS, processes[i]) < 0 ||
            PyDict_SetItem(event, KEY_DOC, head) < 0 ||
            PyDict_SetItem(event, KEY_DOC_TEXT, texts[i]) < 0) {
            result = NULL;
            break;
        }
    }
done:
    for (Py_ssize_t i = 0; i < 2 * count + 2; i++) Py_XDECREF(texts[i]);
    PyMem_Free(texts);
    PyMem_Free(spans);
    return Py_XNewRef(result);
}

/* -- encode_lines: the jsonl sink's JsonlSink._encode over a run of events ------------- */

/* The lines are written straight into the bytes object encode_lines returns (ours alone
 * until then), sized from the call before and cut to length at the end: a buffer of our
 * own cost a copy of every output byte into that object (~2 % of the live tree keeper's
 * samples, docs/performance.md "Thirty-second pass"). */
typedef struct {
    PyObject *bytes; /* NULL until the first line */
    Py_ssize_t size, room;
} Buffer;

/* Bytes per line of the last call: the next call's first size, so that it seldom grows. */
static Py_ssize_t line_bytes_seen = 4096;
#define LINES_ROOM_MIN (64 << 10)
#define LINES_ROOM_FIRST_MAX (64 << 20) /* a first guess past this grows as it goes */

/* Room for ``need`` bytes; -1 with an exception, the lines so far kept. (Not
 * _PyBytes_Resize, which frees the object when it fails: the lines would go with it.) */
static int buffer_grow(Buffer *b, Py_ssize_t need) {
    Py_ssize_t room = b->room > 0 ? b->room : LINES_ROOM_MIN;
    while (room < need) {
        if (room > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        room *= 2;
    }
    PyObject *grown = PyBytes_FromStringAndSize(NULL, room);
    if (grown == NULL) return -1;
    if (b->bytes != NULL) {
        memcpy(PyBytes_AS_STRING(grown), PyBytes_AS_STRING(b->bytes), (size_t)b->size);
        Py_DECREF(b->bytes);
    }
    b->bytes = grown;
    b->room = room;
    return 0;
}

static int buffer_put(Buffer *b, const char *data, Py_ssize_t size) {
    if (b->size + size > b->room && buffer_grow(b, b->size + size) < 0) return -1;
    memcpy(PyBytes_AS_STRING(b->bytes) + b->size, data, (size_t)size);
    b->size += size;
    return 0;
}

/* The first room of a call for ``events`` lines at most, and at most ``most`` bytes plus
 * one line past ``enough``. */
static Py_ssize_t first_room(Py_ssize_t events, Py_ssize_t most, Py_ssize_t enough) {
    Py_ssize_t per_line = line_bytes_seen + line_bytes_seen / 8;
    Py_ssize_t room = LINES_ROOM_FIRST_MAX;
    if (events < LINES_ROOM_FIRST_MAX / per_line) room = events * per_line;
    if (enough < room - per_line) room = enough + per_line;
    if (most < room) room = most;
    return room < LINES_ROOM_MIN ? LINES_ROOM_MIN : room;
}

static int buffer_put_bytes(Buffer *b, PyObject *bytes) {
    return buffer_put(b, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

/* dumps(value) or, with option, dumps(value, option=option): a new bytes; NULL (exception
 * cleared) when orjson refuses it or returns anything else. */
static PyObject *dumps_of(PyObject *dumps, PyObject *value, PyObject *option, PyObject *kwnames) {
    PyObject *args[2] = {value, option};
    PyObject *out = PyObject_Vectorcall(dumps, args, 1, option ? kwnames : NULL);
    if (out != NULL && !PyBytes_CheckExact(out)) Py_CLEAR(out);
    if (out == NULL) PyErr_Clear();
    return out;
}

/* The last `process` one encode_lines call encoded and its JSON (both strong, or NULL): the
 * tree keeper gives a run of one process's events one shared dict (treekeeper/csrc/
 * enrich_memo.h), read-only from there on, so it is encoded once per run. */
typedef struct {
    PyObject *process, *json;
} LastProcess;

static void last_process_clear(LastProcess *last) {
    Py_CLEAR(last->process);
    Py_CLEAR(last->json);
}

/* dumps(process) (new), the last one's JSON again when it is the same object. */
static PyObject *process_json_of(PyObject *dumps, PyObject *process, LastProcess *last) {
    if (process == last->process) return Py_NewRef(last->json);
    PyObject *json = dumps_of(dumps, process, NULL, NULL);
    if (json != NULL) {
        last_process_clear(last);
        last->process = Py_NewRef(process);
        last->json = Py_NewRef(json);
    }
    return json;
}

/* A split doc's line (before, process, after, an added container) into *b: 1, or 0 when
 * orjson refuses a part (*b unchanged). */
static int put_split_line(Buffer *b, PyObject *before, PyObject *process, PyObject *after,
                          PyObject *container, PyObject *dumps, LastProcess *last) {
    static const char container_key[] = ",\"container\":"; /* doc_text._CONTAINER_KEY */
    Py_ssize_t mark = b->size;
    PyObject *process_json = process_json_of(dumps, process, last);
    PyObject *container_json = NULL;
    if (container != NULL && container != Py_None && process_json != NULL)
        container_json = dumps_of(dumps, container, NULL, NULL);
    int ok = process_json != NULL && (container_json != NULL || container == NULL ||
                                      container == Py_None);
    if (ok) {
        ok = buffer_put_bytes(b, before) == 0 && buffer_put_bytes(b, process_json) == 0;
        if (ok && container_json == NULL)
            ok = buffer_put_bytes(b, after) == 0 && buffer_put(b, "\n", 1) == 0;
        else if (ok) /* "container" goes last: the doc had none when it was split */
            ok = buffer_put(b, PyBytes_AS_STRING(after), PyBytes_GET_SIZE(after) - 1) == 0 &&
                 buffer_put(b, container_key, (Py_ssize_t)sizeof container_key - 1) == 0 &&
                 buffer_put_bytes(b, container_json) == 0 && buffer_put(b, "}\n", 2) == 0;
        if (!ok) PyErr_Clear(); /* out of memory: Python tries that line again */
    }
    Py_XDECREF(process_json);
    Py_XDECREF(container_json);
    if (!ok) b->size = mark;
    return ok;
}

/* One event's line into *b, as JsonlSink._encode makes it when the event encodes: 1; 0
 * when it is left to Python (no dict doc, an odd doc_text, orjson refuses), *b unchanged. */
static int put_line(Buffer *b, PyObject *event, PyObject *dumps, PyObject *newline,
                    PyObject *kwnames, LastProcess *last) {
    if (!PyDict_CheckExact(event)) return 0;
    PyObject *doc = item(event, KEY_DOC), *text = doc ? item(event, KEY_DOC_TEXT) : NULL;
    if (PyErr_Occurred()) PyErr_Clear();
    if (doc == NULL || !PyDict_CheckExact(doc)) return 0;
    if (text == NULL || text == Py_None) {
        PyObject *line = dumps_of(dumps, doc, newline, kwnames);
        int ok = line != NULL && buffer_put_bytes(b, line) == 0;
        Py_XDECREF(line);
        return ok;
    }
    if (!PyTuple_CheckExact(text) || PyTuple_GET_SIZE(text) != 2) return 0;
    PyObject *before = PyTuple_GET_ITEM(text, 0), *after = PyTuple_GET_ITEM(text, 1);
    PyObject *process = item(doc, KEY_PROCESS);
    PyObject *container = process ? item(doc, KEY_CONTAINER) : NULL;
    if (PyErr_Occurred()) PyErr_Clear();
    if (!PyBytes_CheckExact(before) || !PyBytes_CheckExact(after) || process == NULL ||
        (container != NULL && PyBytes_GET_SIZE(after) < 1))
        return 0;
    /* dumps may run Python code: hold what is borrowed from the doc (text holds its parts) */
    Py_INCREF(text);
    Py_INCREF(process);
    Py_XINCREF(container);
    int ok = put_split_line(b, before, process, after, container, dumps, last);
    Py_DECREF(text);
    Py_DECREF(process);
    Py_XDECREF(container);
    return ok;
}

/* encode_lines(dumps, newline_option, events, start, most, enough) -> (lines, upto): the
 * lines of events[start:upto] joined, each as JsonlSink._encode makes it; upto stops
 * before an event it leaves to Python, before a line that would take the lines past
 * ``most`` bytes, and after the line that takes them to ``enough`` or more. */
static PyObject *encode_lines(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_CheckExact(args[2]) || !PyLong_Check(args[3]) ||
        !PyLong_Check(args[4]) || !PyLong_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_lines(dumps, option, events: list, start, most, enough)");
        return NULL;
    }
    PyObject *dumps = args[0], *newline = args[1], *events = args[2];
    Py_ssize_t start = PyLong_AsSsize_t(args[3]), most = PyLong_AsSsize_t(args[4]);
    Py_ssize_t enough = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) return NULL;
    /* Interned, as vectorcall wants keyword names (orjson compares them by identity). */
    PyObject *option_name = PyUnicode_InternFromString("option");
    PyObject *kwnames = option_name ? PyTuple_Pack(1, option_name) : NULL;
    Py_XDECREF(option_name);
    if (kwnames == NULL) return NULL;
    Py_ssize_t upto = start < 0 ? 0 : start;
    Py_ssize_t count = PyList_GET_SIZE(events);
    Buffer buffer = {NULL, 0, 0}, *b = &buffer;
    if (upto < count && buffer_grow(b, first_room(count - upto, most, enough)) < 0) {
        Py_DECREF(kwnames);
        return NULL;
    }
    Py_ssize_t first = upto;
    LastProcess last = {NULL, NULL};
    while (upto < PyList_GET_SIZE(events) && b->size < enough) {
        Py_ssize_t mark = b->size;
        PyObject *event = Py_NewRef(PyList_GET_ITEM(events, upto)); /* dumps runs Python code */
        int put = put_line(b, event, dumps, newline, kwnames, &last);
        Py_DECREF(event);
        if (!put) break;
        if (b->size > most) {
            b->size = mark;
            break;
        }
        upto++;
    }
    last_process_clear(&last);
    Py_DECREF(kwnames);
    if (upto > first) line_bytes_seen = b->size / (upto - first) + 1;
    PyObject *lines = b->bytes;
    if (lines == NULL)
        lines = PyBytes_FromStringAndSize(NULL, 0);
    else if (_PyBytes_Resize(&lines, b->size) < 0) /* shrinks in place; ours alone, so allowed */
        lines = NULL;
    return lines ? Py_BuildValue("(Nn)", lines, upto) : NULL;
}

static PyMethodDef methods[] = {
    {"encode_lines", (PyCFunction)(void (*)(void))encode_lines, METH_FASTCALL,
     "encode_lines(dumps, option, events, start, most, enough) -> (lines, upto): the jsonl "
     "sink's lines, in C."},
    {"place_heads", (PyCFunction)(void (*)(void))place_heads, METH_FASTCALL,
     "place_heads(events, heads, docs_json, loads) -> bool: wire.events_with_heads's placing, in C."},
    {"encode_docs", (PyCFunction)(void (*)(void))encode_docs, METH_FASTCALL,
     "encode_docs(dumps, Fragment, JSONEncodeError, WrittenDoc, events, with_heads) -> (docs_json, heads, "
     "slim, refused): doc_text's, in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_doc_text",
                                    "auditstream.doc_text.encode_docs in C.", -1, methods};

PyMODINIT_FUNC PyInit_native_doc_text(void) {
    if (init_keys() < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    /* The event key it writes, for the test that holds it to auditstream.doc_text's. */
    if (m != NULL && PyModule_AddObjectRef(m, "DOC_TEXT", KEY_DOC_TEXT) < 0) Py_CLEAR(m);
    return m;
}
