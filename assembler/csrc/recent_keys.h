/* assembler/recent_keys.py's RecentKeys in C: the keys of the events completed last, a dict
 * for membership and a ring of the same keys for their age. Shared by assembler.native_recent
 * (the type) and assembler.native_runs (which adds to it without a Python call). */
#ifndef AUDITSTREAM_RECENT_KEYS_H
#define AUDITSTREAM_RECENT_KEYS_H
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *keys;  /* dict: key -> None */
    PyObject **ring; /* capacity slots, NULL where none yet; each an owned reference */
    Py_ssize_t capacity, at; /* at: the next slot, the oldest key once the ring is full */
} RecentKeys;

/* Hold `key`, known not held: the oldest goes beyond capacity. 0, or -1 with an error set
 * (nothing changed then). */
static inline int recent_add_new(RecentKeys *r, PyObject *key)
{
    if (PyDict_SetItem(r->keys, key, Py_None) < 0)
        return -1;
    PyObject *old = r->ring[r->at];
    if (old != NULL && PyDict_DelItem(r->keys, old) < 0)
        return -1; /* held since it was added (its hash worked then): not expected */
    Py_INCREF(key);
    r->ring[r->at] = key;
    Py_XDECREF(old);
    r->at = r->at + 1 < r->capacity ? r->at + 1 : 0;
    return 0;
}

/* RecentKeys.add: a key held already keeps its age. 0, or -1 with an error set. */
static inline int recent_add(RecentKeys *r, PyObject *key)
{
    int held = PyDict_Contains(r->keys, key);
    if (held != 0)
        return held < 0 ? -1 : 0;
    return recent_add_new(r, key);
}

#endif
