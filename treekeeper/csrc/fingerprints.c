/* treekeeper.dedupe's RecentFingerprints and Dedupe.filter in C.
 *
 * The Python set of ints held ~650k fingerprints (two generations of the receiver's
 * resendable records): each lookup and insert a cache miss plus a PyLong's refcount, and
 * ~1.5 µs per event in all. Here a generation is an open-addressed table of int64 (linear
 * probing, at most half full) that keeps its memory when it becomes the newer one again.
 *
 * Fingerprints are hash() values (an int64, Py_hash_t), a record's XORed with hash() of its
 * event's node where the log names one (dedupe.node_salt). An int outside int64 cannot be
 * one, nor can anything but an int: has_all/__contains__ answer False for it, add/add_all
 * raise TypeError, and filter_events keeps an event carrying one without remembering it
 * (a duplicate may pass, nothing is dropped).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "hash_hex.h"

/* One generation. 0 marks an empty slot, so the fingerprint 0 is a flag of its own. */
typedef struct {
    int64_t *slots;
    size_t mask; /* slots - 1 (a power of two) */
    size_t used; /* nonzero members */
    int has_zero;
} Gen;

/* The fingerprints are hashes already; the mix keeps a run of near values from clustering. */
static inline size_t mix(int64_t value)
{
    uint64_t x = (uint64_t)value;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static size_t gen_len(const Gen *g) { return g->used + (size_t)g->has_zero; }

static int gen_has(const Gen *g, int64_t value)
{
    if (value == 0)
        return g->has_zero;
    if (g->slots == NULL)
        return 0;
    for (size_t i = mix(value) & g->mask;; i = (i + 1) & g->mask) {
        int64_t slot = g->slots[i];
        if (slot == value)
            return 1;
        if (slot == 0)
            return 0;
    }
}

static void place(int64_t *slots, size_t mask, int64_t value)
{
    size_t i = mix(value) & mask;
    while (slots[i] != 0)
        i = (i + 1) & mask;
    slots[i] = value;
}

static int gen_grow(Gen *g)
{
    size_t size = g->slots == NULL ? 64 : (g->mask + 1) * 2;
    int64_t *slots = PyMem_Calloc(size, sizeof(int64_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (g->slots != NULL) {
        for (size_t i = 0; i <= g->mask; i++)
            if (g->slots[i] != 0)
                place(slots, size - 1, g->slots[i]);
        PyMem_Free(g->slots);
    }
    g->slots = slots;
    g->mask = size - 1;
    return 0;
}

/* One probe: the slot found holds the value already, or is where it goes unless the
 * table must grow first. */
static int gen_add(Gen *g, int64_t value)
{
    if (value == 0) {
        g->has_zero = 1;
        return 0;
    }
    if (g->slots != NULL) {
        size_t i = mix(value) & g->mask;
        for (; g->slots[i] != 0; i = (i + 1) & g->mask)
            if (g->slots[i] == value)
                return 0;
        if ((g->used + 1) * 2 <= g->mask + 1) {
            g->slots[i] = value;
            g->used++;
            return 0;
        }
    }
    if (gen_grow(g) < 0)
        return -1;
    place(g->slots, g->mask, value);
    g->used++;
    return 0;
}

static void gen_clear(Gen *g)
{
    if (g->slots != NULL)
        memset(g->slots, 0, (g->mask + 1) * sizeof(int64_t));
    g->used = 0;
    g->has_zero = 0;
}

typedef struct {
    PyObject_HEAD Gen current;
    Gen previous;
    Py_ssize_t capacity;
} Recent;

static PyTypeObject RecentType;

static int recent_has(const Recent *r, int64_t value)
{
    return gen_has(&r->current, value) || gen_has(&r->previous, value);
}

/* After adding: a full current generation becomes the previous one (the old previous,
 * cleared, is the new current: its table is already grown to size). */
static void recent_settle(Recent *r)
{
    if (gen_len(&r->current) < (size_t)r->capacity)
        return;
    Gen old = r->previous;
    r->previous = r->current;
    gen_clear(&old);
    r->current = old;
}

/* 1 and *out set for an int within int64; 0 for anything else (never a member); -1 with
 * an exception only where Python's int conversion itself fails. */
static int fingerprint_of(PyObject *item, int64_t *out)
{
    if (!PyLong_Check(item))
        return 0;
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (overflow)
        return 0;
    if (value == -1 && PyErr_Occurred())
        return -1;
    *out = (int64_t)value;
    return 1;
}

static int recent_init(Recent *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", NULL};
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &capacity))
        return -1;
    gen_clear(&self->current);
    gen_clear(&self->previous);
    self->capacity = capacity < 1 ? 1 : capacity;
    return 0;
}

static void recent_dealloc(Recent *self)
{
    PyMem_Free(self->current.slots);
    PyMem_Free(self->previous.slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int recent_contains(Recent *self, PyObject *item)
{
    int64_t value;
    int ok = fingerprint_of(item, &value);
    return ok <= 0 ? ok : recent_has(self, value);
}

static Py_ssize_t recent_len(Recent *self)
{
    size_t n = gen_len(&self->current);
    const Gen *p = &self->previous;
    if (p->has_zero && !self->current.has_zero)
        n++;
    if (p->slots != NULL)
        for (size_t i = 0; i <= p->mask; i++)
            if (p->slots[i] != 0 && !gen_has(&self->current, p->slots[i]))
                n++;
    return (Py_ssize_t)n;
}

static PyObject *recent_has_all(Recent *self, PyObject *fingerprints)
{
    PyObject *seq = PySequence_Fast(fingerprints, "has_all takes a sequence of ints");
    if (seq == NULL)
        return NULL;
    int all = 1;
    for (Py_ssize_t i = 0; all && i < PySequence_Fast_GET_SIZE(seq); i++) {
        int64_t value;
        int ok = fingerprint_of(PySequence_Fast_GET_ITEM(seq, i), &value);
        if (ok < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        all = ok && recent_has(self, value);
    }
    Py_DECREF(seq);
    return PyBool_FromLong(all);
}

static PyObject *recent_add_all(Recent *self, PyObject *fingerprints)
{
    PyObject *seq = PySequence_Fast(fingerprints, "add_all takes a sequence of ints");
    if (seq == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        int64_t value;
        int ok = fingerprint_of(PySequence_Fast_GET_ITEM(seq, i), &value);
        if (ok == 0)
            PyErr_SetString(PyExc_TypeError, "a fingerprint is a hash(): an int within int64");
        if (ok <= 0 || gen_add(&self->current, value) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    recent_settle(self);
    Py_RETURN_NONE;
}

static PyObject *recent_add(Recent *self, PyObject *fingerprint)
{
    PyObject *one = PyTuple_Pack(1, fingerprint);
    if (one == NULL)
        return NULL;
    PyObject *result = recent_add_all(self, one);
    Py_DECREF(one);
    return result;
}

/* -- filter_events: Dedupe.filter ---------------------------------------------------- */

static PyObject *s_doc, *s_doc_text, *s_auditd, *s_record_hashes, *s_key;

/* node_salt of the node of the event's key [node, sec, msec, serial] (dedupe.event_node):
 * 1 and *salt set (0 for ""), 0 when the event has no such key (no identity), -1 with an
 * exception. */
static int key_node_salt(PyObject *event, int64_t *salt)
{
    PyObject *key = PyDict_GetItemWithError(event, s_key); /* borrowed */
    if (key == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!(PyList_Check(key) || PyTuple_Check(key)) || PySequence_Fast_GET_SIZE(key) == 0)
        return 0;
    PyObject *node = PySequence_Fast_GET_ITEM(key, 0);
    if (!PyUnicode_Check(node))
        return 0;
    *salt = 0;
    if (PyUnicode_GET_LENGTH(node) > 0) {
        Py_hash_t h = PyObject_Hash(node);
        if (h == -1 && PyErr_Occurred())
            return -1;
        *salt = (int64_t)h;
    }
    return 1;
}

/* *values has room for n (grown as needed); -1 with MemoryError. */
static int values_room(int64_t **values, Py_ssize_t *room, Py_ssize_t n)
{
    if (n <= *room)
        return 0;
    int64_t *grown = PyMem_Realloc(*values, (size_t)n * sizeof(int64_t));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *values = grown;
    *room = n;
    return 0;
}

/* A head's record hashes given as hashes_text's string (hash_hex.h), salted with its key's
 * node_salt, into *values: their count, 0 when the string is not such text or the event has
 * no key (no identity: kept and not remembered, as head_fingerprints says None), -1 error. */
static Py_ssize_t text_fingerprints(PyObject *event, PyObject *text, int64_t **values,
                                    Py_ssize_t *room)
{
    if (!PyUnicode_IS_ASCII(text))
        return 0;
    Py_ssize_t len = PyUnicode_GET_LENGTH(text), n = len / HASH_HEX_DIGITS;
    if (len % HASH_HEX_DIGITS)
        return 0;
    int64_t salt = 0;
    int keyed = key_node_salt(event, &salt);
    if (keyed <= 0)
        return keyed;
    if (values_room(values, room, n) < 0)
        return -1;
    const char *digits = (const char *)PyUnicode_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!hash_hex_read(digits + i * HASH_HEX_DIGITS, &(*values)[i]))
            return 0;
        (*values)[i] ^= salt;
    }
    return n;
}

/* The fingerprints of one event into *values (grown as needed): their count, 0 when the
 * event has none it can be deduplicated by, -1 with an exception. A head's are its record
 * hashes XORed with its key's node_salt (a whole doc's are salted by doc_fingerprints). */
static Py_ssize_t event_fingerprints(PyObject *event, PyObject *doc_fingerprints,
                                     int64_t **values, Py_ssize_t *room)
{
    PyObject *doc = PyDict_GetItemWithError(event, s_doc); /* borrowed */
    if (doc == NULL && PyErr_Occurred())
        return -1;
    if (doc == NULL)
        doc = Py_None;
    PyObject *found = NULL; /* a new reference to a list or tuple of ints, or None */
    int64_t salt = 0;
    int has_text = PyDict_Contains(event, s_doc_text);
    if (has_text < 0)
        return -1;
    if (has_text) { /* head_fingerprints: the assembler's record hashes */
        PyObject *auditd = PyDict_Check(doc) ? PyDict_GetItemWithError(doc, s_auditd) : NULL;
        PyObject *hashes = auditd != NULL && PyDict_Check(auditd)
                               ? PyDict_GetItemWithError(auditd, s_record_hashes)
                               : NULL;
        if (PyErr_Occurred())
            return -1;
        if (hashes != NULL && PyUnicode_CheckExact(hashes)) /* hashes_text's string */
            return text_fingerprints(event, hashes, values, room);
        if (hashes == NULL || !PyList_Check(hashes))
            return 0;
        int keyed = key_node_salt(event, &salt);
        if (keyed <= 0)
            return keyed;
        found = Py_NewRef(hashes); /* a non-int in it: no identity, below (an older assembler's) */
    } else {
        found = PyObject_CallOneArg(doc_fingerprints, doc);
        if (found == NULL)
            return -1;
        if (found == Py_None) {
            Py_DECREF(found);
            return 0;
        }
    }
    PyObject *seq = PySequence_Fast(found, "fingerprints are a sequence of ints");
    Py_DECREF(found);
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (values_room(values, room, n) < 0) {
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int ok = fingerprint_of(PySequence_Fast_GET_ITEM(seq, i), &(*values)[i]);
        if (ok <= 0) {
            Py_DECREF(seq);
            return ok; /* not a hash(): no identity, kept and not remembered */
        }
        (*values)[i] ^= salt;
    }
    Py_DECREF(seq);
    return n;
}

static PyObject *filter_events(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyObject_TypeCheck(args[0], &RecentType) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "filter_events(seen: RecentFingerprints, events: list, doc_fingerprints)");
        return NULL;
    }
    Recent *seen = (Recent *)args[0];
    PyObject *events = args[1], *doc_fingerprints = args[2];
    PyObject *kept = PyList_New(0);
    int64_t *values = NULL;
    Py_ssize_t room = 0, dropped = 0;
    if (kept == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (!PyDict_Check(event)) {
            PyErr_Format(PyExc_TypeError, "an event is a dict, not %.80s", Py_TYPE(event)->tp_name);
            goto error;
        }
        Py_INCREF(event); /* doc_fingerprints may run Python code */
        Py_ssize_t n = event_fingerprints(event, doc_fingerprints, &values, &room);
        if (n < 0) {
            Py_DECREF(event);
            goto error;
        }
        int duplicate = n > 0;
        for (Py_ssize_t j = 0; duplicate && j < n; j++)
            duplicate = recent_has(seen, values[j]);
        if (duplicate) {
            dropped++;
            Py_DECREF(event);
            continue;
        }
        for (Py_ssize_t j = 0; j < n; j++)
            if (gen_add(&seen->current, values[j]) < 0) {
                Py_DECREF(event);
                goto error;
            }
        if (n > 0)
            recent_settle(seen);
        int failed = PyList_Append(kept, event);
        Py_DECREF(event);
        if (failed < 0)
            goto error;
    }
    PyMem_Free(values);
    return Py_BuildValue("(Nn)", kept, dropped);
error:
    PyMem_Free(values);
    Py_DECREF(kept);
    return NULL;
}

static PyObject *recent_get_capacity(Recent *self, void *closure)
{
    return PyLong_FromSsize_t(self->capacity);
}

static PyMethodDef recent_methods[] = {
    {"has_all", (PyCFunction)recent_has_all, METH_O, "Every one of them is a member."},
    {"add_all", (PyCFunction)recent_add_all, METH_O, "Remember each of them as the newest."},
    {"add", (PyCFunction)recent_add, METH_O, "Remember one as the newest."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef recent_getset[] = {
    {"capacity", (getter)recent_get_capacity, NULL, "at least this many newest are kept", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods recent_as_sequence = {
    .sq_length = (lenfunc)recent_len,
    .sq_contains = (objobjproc)recent_contains,
};

static PyTypeObject RecentType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "treekeeper.native_fingerprints.RecentFingerprints",
    .tp_basicsize = sizeof(Recent),
    .tp_dealloc = (destructor)recent_dealloc,
    .tp_as_sequence = &recent_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A set of int64 fingerprints that forgets its oldest: at least the newest "
              "capacity stay (treekeeper.dedupe.RecentFingerprints).",
    .tp_methods = recent_methods,
    .tp_getset = recent_getset,
    .tp_init = (initproc)recent_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef methods[] = {
    {"filter_events", (PyCFunction)(void (*)(void))filter_events, METH_FASTCALL,
     "filter_events(seen, events, doc_fingerprints) -> (kept, dropped): Dedupe.filter."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_fingerprints",
                                    "treekeeper.dedupe's fingerprint set and filter in C.", -1,
                                    methods};

PyMODINIT_FUNC PyInit_native_fingerprints(void)
{
    s_doc = PyUnicode_InternFromString("doc");
    s_doc_text = PyUnicode_InternFromString("doc_text");
    s_auditd = PyUnicode_InternFromString("auditd");
    s_record_hashes = PyUnicode_InternFromString("record_hashes");
    s_key = PyUnicode_InternFromString("key");
    if (s_doc == NULL || s_doc_text == NULL || s_auditd == NULL || s_record_hashes == NULL ||
        s_key == NULL || PyType_Ready(&RecentType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* The keys it reads, for the test that holds them to auditstream.doc_text's. */
    if (PyModule_AddObjectRef(m, "RecentFingerprints", (PyObject *)&RecentType) < 0 ||
        PyModule_AddObjectRef(m, "DOC_TEXT", s_doc_text) < 0 ||
        PyModule_AddObjectRef(m, "RECORD_HASHES", s_record_hashes) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
