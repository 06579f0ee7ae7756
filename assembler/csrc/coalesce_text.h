/*
 * Part of assembler/csrc/coalesce.c (ASCII strings, interned keys, escape() of auditstream/escape.py, upper-case hex): included by it once, so the module stays one
 * translation unit (setup.py and the build command compile coalesce.c alone).
 */
#ifndef AUDITSTREAM_COALESCE_TEXT_H
#define AUDITSTREAM_COALESCE_TEXT_H

/* ------------------------------------------------------------------------------------------ */
/* Text: ASCII strings, interned keys, escape() (auditstream/escape.py), upper-case hex.       */

static PyObject *ascii_str(const char *text, Py_ssize_t len) {
    PyObject *str = PyUnicode_New(len, 127);
    if (str != NULL && len > 0)
        memcpy(PyUnicode_1BYTE_DATA(str), text, (size_t)len);
    return str;
}

/* Keys repeat on every record: a small direct-mapped cache of interned strings. */
#define KEY_CACHE_SIZE 512
#define KEY_CACHE_MAX_LEN 32
static PyObject *g_key_cache[KEY_CACHE_SIZE];

static PyObject *key_str(const char *text, Py_ssize_t len) {
    if (len > KEY_CACHE_MAX_LEN)
        return ascii_str(text, len);
    uint32_t hash = 2166136261u;
    for (Py_ssize_t i = 0; i < len; i++)
        hash = (hash ^ (unsigned char)text[i]) * 16777619u;
    PyObject **entry = &g_key_cache[hash & (KEY_CACHE_SIZE - 1)];
    PyObject *cached = *entry;
    if (cached != NULL && PyUnicode_GET_LENGTH(cached) == len &&
        memcmp(PyUnicode_1BYTE_DATA(cached), text, (size_t)len) == 0) {
        Py_INCREF(cached);
        return cached;
    }
    PyObject *str = ascii_str(text, len);
    if (str == NULL)
        return NULL;
    PyUnicode_InternInPlace(&str);
    Py_INCREF(str);
    Py_XSETREF(*entry, str);
    return str;
}

/* A byte escape() leaves as it is: printable ASCII other than '%'. */
static inline int passes_escape(unsigned char byte) { return byte >= 0x20 && byte <= 0x7e && byte != '%'; }

/* Length of the valid UTF-8 sequence (as Python's strict decoder reads it) at text, else 0. */
static Py_ssize_t utf8_sequence(const unsigned char *text, Py_ssize_t left) {
    unsigned char lead = text[0];
    if (lead < 0x80)
        return 1;
    if (lead < 0xc2 || lead > 0xf4)
        return 0;
    Py_ssize_t need = lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
    if (left < need)
        return 0;
    unsigned char low = 0x80, high = 0xbf; /* allowed range of the second byte */
    if (lead == 0xe0)
        low = 0xa0;
    else if (lead == 0xed)
        high = 0x9f; /* surrogates are invalid */
    else if (lead == 0xf0)
        low = 0x90;
    else if (lead == 0xf4)
        high = 0x8f;
    if (text[1] < low || text[1] > high)
        return 0;
    for (Py_ssize_t i = 2; i < need; i++)
        if ((text[i] & 0xc0) != 0x80)
            return 0;
    return need;
}

static char *put_pct(char *out, unsigned char byte) {
    static const char digits[] = "0123456789abcdef";
    *out++ = '%';
    *out++ = digits[byte >> 4];
    *out++ = digits[byte & 15];
    return out;
}

/* escape(raw): valid UTF-8 passes except controls, '%', DEL and U+FEFF; other bytes as %xx.
 * A byte that starts no valid sequence is escaped alone: Python's decoder error ranges hold
 * only such bytes (a lead and continuation bytes), so the output is the same. */
static PyObject *escape_bytes(const unsigned char *raw, Py_ssize_t len) {
    Py_ssize_t i = 0;
    while (i < len && passes_escape(raw[i]))
        i++;
    if (i == len)
        return ascii_str((const char *)raw, len);
    if (len > PY_SSIZE_T_MAX / 3)
        return PyErr_NoMemory();
    char *buffer = PyMem_Malloc((size_t)len * 3 + 1);
    if (buffer == NULL)
        return PyErr_NoMemory();
    memcpy(buffer, raw, (size_t)i);
    char *out = buffer + i;
    while (i < len) {
        Py_ssize_t size = utf8_sequence(raw + i, len - i);
        if (size == 1 && passes_escape(raw[i])) {
            *out++ = (char)raw[i];
        } else if (size <= 1) {
            out = put_pct(out, raw[i]);
            size = 1;
        } else if (size == 3 && raw[i] == 0xef && raw[i + 1] == 0xbb && raw[i + 2] == 0xbf) {
            for (int k = 0; k < 3; k++)
                out = put_pct(out, raw[i + k]); /* U+FEFF, escaped as laurel does */
        } else {
            memcpy(out, raw + i, (size_t)size);
            out += size;
        }
        i += size;
    }
    PyObject *str = PyUnicode_DecodeUTF8(buffer, out - buffer, "strict");
    PyMem_Free(buffer);
    return str;
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
