/*
 * Part of assembler/csrc/coalesce.c (ASCII strings, interned keys, escape() of auditstream/escape.py, upper-case hex): included by it once, so the module stays one
 * translation unit (setup.py and the build command compile coalesce.c alone).
 */
#ifndef AUDITSTREAM_COALESCE_TEXT_H
#define AUDITSTREAM_COALESCE_TEXT_H

#include "escape.h"

/* ------------------------------------------------------------------------------------------ */
/* Text: ASCII strings, interned keys, escape() (auditstream/escape.py), upper-case hex.       */

/* Strings that repeat from record to record, shared through a cache of size (a power of
 * 2) slots, each text in one of two (its hash's low and high bits). Keys are interned: with
 * one slot per key in 512, ~5 of the ~45 key lookups per event collided, each making and
 * interning a new str. Short values (arch, success, uid, mode, "(none)"…) are shared. */
#define KEY_CACHE_SIZE 1024
#define VALUE_CACHE_SIZE 4096
static PyObject *g_key_slots[KEY_CACHE_SIZE], *g_value_slots[VALUE_CACHE_SIZE];

typedef struct {
    PyObject **slots;
    uint32_t size;
    Py_ssize_t max_len; /* longer texts are not cached */
    int intern;
} StrCache;

static StrCache g_keys = {g_key_slots, KEY_CACHE_SIZE, 32, 1};
static StrCache g_values = {g_value_slots, VALUE_CACHE_SIZE, 16, 0};

static int text_cached(PyObject *cached, const char *text, Py_ssize_t len) {
    return cached != NULL && PyUnicode_GET_LENGTH(cached) == len &&
           memcmp(PyUnicode_1BYTE_DATA(cached), text, (size_t)len) == 0;
}

/* The str of the ASCII text: the cached one, or a new one put in its first slot if free,
 * else in its second. */
static PyObject *cached_str(StrCache *cache, const char *text, Py_ssize_t len) {
    if (len > cache->max_len)
        return ascii_str(text, len);
    uint32_t hash = 2166136261u;
    for (Py_ssize_t i = 0; i < len; i++)
        hash = (hash ^ (unsigned char)text[i]) * 16777619u;
    PyObject **first = &cache->slots[hash & (cache->size - 1)];
    PyObject **second = &cache->slots[(hash >> 16) & (cache->size - 1)];
    PyObject **entry = text_cached(*first, text, len)    ? first
                     : text_cached(*second, text, len) ? second : NULL;
    if (entry != NULL) {
        Py_INCREF(*entry);
        return *entry;
    }
    PyObject *str = ascii_str(text, len);
    if (str == NULL)
        return NULL;
    if (cache->intern)
        PyUnicode_InternInPlace(&str);
    Py_INCREF(str);
    entry = *first == NULL ? first : second;
    Py_XSETREF(*entry, str);
    return str;
}

static PyObject *key_str(const char *text, Py_ssize_t len) { return cached_str(&g_keys, text, len); }
static PyObject *value_str(const char *text, Py_ssize_t len) { return cached_str(&g_values, text, len); }

/* escape(raw) as a str (escape.h). */
static PyObject *escape_bytes(const unsigned char *raw, Py_ssize_t len) {
    return escape_with_prefix(NULL, raw, len);
}

static inline int upper_hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* interpret.py's _UPPER_HEX: upper-case hex pairs (go-libaudit ignores lower case). */
static int is_upper_hex(const char *text, Py_ssize_t len) {
    if (len % 2 != 0)
        return 0;
    for (Py_ssize_t i = 0; i < len; i++)
        if (upper_hex_value(text[i]) < 0)
            return 0;
    return 1;
}

/* Decode upper-case hex (checked by the caller) into out (len / 2 bytes). */
static void decode_upper_hex(const char *text, Py_ssize_t len, unsigned char *out) {
    for (Py_ssize_t i = 0; i + 1 < len; i += 2)
        out[i / 2] = (unsigned char)(upper_hex_value(text[i]) << 4 | upper_hex_value(text[i + 1]));
}

enum NulRule { NUL_TO_SPACE, NUL_ENDS };

/* escape() of hex-decoded text: NUL becomes a space (argv joined), or ends the text. */
static PyObject *hex_text(const char *text, Py_ssize_t len, enum NulRule rule) {
    unsigned char small[256];
    Py_ssize_t size = len / 2;
    unsigned char *bytes = size <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)size);
    if (bytes == NULL)
        return PyErr_NoMemory();
    decode_upper_hex(text, len, bytes);
    for (Py_ssize_t i = 0; i < size; i++) {
        if (bytes[i] != 0)
            continue;
        if (rule == NUL_ENDS) {
            size = i;
            break;
        }
        bytes[i] = ' ';
    }
    PyObject *str = escape_bytes(bytes, size);
    if (bytes != small)
        PyMem_Free(bytes);
    return str;
}

/* The length of the run of ASCII digits at text. */
static Py_ssize_t digit_run(const char *text, Py_ssize_t len) {
    Py_ssize_t i = 0;
    while (i < len && text[i] >= '0' && text[i] <= '9')
        i++;
    return i;
}

#endif
