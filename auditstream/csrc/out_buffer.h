/* A byte buffer that grows by doubling (PyMem), for the C modules that write JSON or
 * msgpack text: out_put appends, out_reserve makes room first, put_signed and put_unsigned
 * write an integer in decimal. They set MemoryError and return -1 when memory runs out.
 *
 * Used by assembler/csrc/ecs_write.h (the docs' JSON) and auditstream/csrc/wire.c (frame
 * bodies). out_grow, the rare path, is static and not inline (inlined into every put it
 * cost the assembler instructions per event); the rest is static inline.
 */
#ifndef AUDITSTREAM_OUT_BUFFER_H
#define AUDITSTREAM_OUT_BUFFER_H

#include <Python.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t size, cap;
} Out;

static int out_grow(Out *o, Py_ssize_t more)
{
    Py_ssize_t cap = o->cap ? o->cap : 4096;
    while (cap < o->size + more) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *data = PyMem_Realloc(o->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->data = data;
    o->cap = cap;
    return 0;
}

static inline int out_reserve(Out *o, Py_ssize_t more)
{
    return o->size + more <= o->cap ? 0 : out_grow(o, more);
}

static inline int out_put(Out *o, const char *text, Py_ssize_t len)
{
    if (out_reserve(o, len) < 0)
        return -1;
    memcpy(o->data + o->size, text, (size_t)len);
    o->size += len;
    return 0;
}

#define PUT_LIT(o, lit) out_put((o), (lit), (Py_ssize_t)sizeof(lit) - 1)

/* An integer in decimal, as orjson writes it (snprintf cost more than the rest of a put). */
static int put_unsigned(Out *o, unsigned long long value, int negative)
{
    char digits[24];
    int at = (int)sizeof(digits);
    do {
        digits[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    if (negative)
        digits[--at] = '-';
    return out_put(o, digits + at, (Py_ssize_t)sizeof(digits) - at);
}

static int put_signed(Out *o, long long value)
{
    if (value < 0)
        return put_unsigned(o, 0ULL - (unsigned long long)value, 1);
    return put_unsigned(o, (unsigned long long)value, 0);
}

#endif
