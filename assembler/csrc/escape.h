/*
 * escape() of auditstream/escape.py in C, for the modules of assembler/csrc/ (each
 * includes it once; static functions, so each module is still one translation unit).
 * Printable ASCII other than '%' and valid multi-byte UTF-8 pass; '%', controls, DEL,
 * U+FEFF and bytes that start no valid sequence become %xx (lower-case hex).
 */
#ifndef AUDITSTREAM_ESCAPE_H
#define AUDITSTREAM_ESCAPE_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline int passes_escape(unsigned char byte)
{
    return byte >= 0x20 && byte <= 0x7e && byte != '%';
}

/* Nonzero when one of the 8 bytes of word would not pass: below 0x20, 0x7f or above, or
 * '%' (haszero / hasless of "Bit Twiddling Hacks": exact about whether one is there). */
static inline uint64_t word_fails_escape(uint64_t word)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t del = word ^ (ones * 0x7f), percent = word ^ (ones * '%');
    uint64_t below_space = (word - ones * 0x20) & ~word;
    return (below_space | word | ((del - ones) & ~del) | ((percent - ones) & ~percent)) & highs;
}

/* Every byte passes: a word at a time (the records' text, ~200 bytes, goes through here
 * twice per record), the last word overlapping the one before it. */
static int all_pass_escape(const unsigned char *raw, Py_ssize_t len)
{
    uint64_t word;
    if (len < 8) {
        for (Py_ssize_t i = 0; i < len; i++)
            if (!passes_escape(raw[i]))
                return 0;
        return 1;
    }
    for (Py_ssize_t i = 0; i + 8 <= len; i += 8) {
        memcpy(&word, raw + i, 8);
        if (word_fails_escape(word))
            return 0;
    }
    memcpy(&word, raw + len - 8, 8);
    return !word_fails_escape(word);
}

/* Length of the valid UTF-8 sequence at raw[0] (strict, as Python's decoder), 0 if none. */
static Py_ssize_t utf8_sequence_length(const unsigned char *raw, Py_ssize_t left)
{
    unsigned char lead = raw[0];
    unsigned char low = 0x80, high = 0xbf;
    Py_ssize_t len;
    if (lead < 0x80)
        return 1;
    if (lead >= 0xc2 && lead <= 0xdf)
        len = 2;
    else if (lead >= 0xe0 && lead <= 0xef) {
        len = 3;
        if (lead == 0xe0)
            low = 0xa0;
        else if (lead == 0xed) /* no surrogates */
            high = 0x9f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        len = 4;
        if (lead == 0xf0)
            low = 0x90;
        else if (lead == 0xf4)
            high = 0x8f;
    } else
        return 0;
    if (left < len || raw[1] < low || raw[1] > high)
        return 0;
    for (Py_ssize_t i = 2; i < len; i++)
        if (raw[i] < 0x80 || raw[i] > 0xbf)
            return 0;
    return len;
}

static char *put_percent(char *out, const unsigned char *raw, Py_ssize_t len)
{
    static const char hex[] = "0123456789abcdef";
    for (Py_ssize_t i = 0; i < len; i++) {
        *out++ = '%';
        *out++ = hex[raw[i] >> 4];
        *out++ = hex[raw[i] & 0x0f];
    }
    return out;
}

/* escape() into UTF-8 bytes at out (room for 3 * len); returns the end. */
static char *escape_into(char *out, const unsigned char *raw, Py_ssize_t len)
{
    Py_ssize_t i = 0;
    while (i < len) {
        unsigned char byte = raw[i];
        if (passes_escape(byte)) {
            *out++ = (char)byte;
            i++;
            continue;
        }
        Py_ssize_t seq = utf8_sequence_length(raw + i, len - i);
        /* Controls, '%', DEL (one byte), U+FEFF and invalid bytes become %xx. */
        int is_bom = seq == 3 && byte == 0xef && raw[i + 1] == 0xbb && raw[i + 2] == 0xbf;
        if (seq <= 1 || is_bom) {
            Py_ssize_t width = is_bom ? 3 : 1;
            out = put_percent(out, raw + i, width);
            i += width;
        } else {
            memcpy(out, raw + i, (size_t)seq);
            out += seq;
            i += seq;
        }
    }
    return out;
}

static PyObject *ascii_str(const char *text, Py_ssize_t len)
{
    PyObject *out = PyUnicode_New(len, 127);
    if (out != NULL)
        memcpy(PyUnicode_DATA(out), text, (size_t)len);
    return out;
}

/* prefix (an ASCII str or NULL) + escape(raw), as one str. */
static PyObject *escape_with_prefix(PyObject *prefix, const unsigned char *raw, Py_ssize_t len)
{
    Py_ssize_t prefix_len = prefix ? PyUnicode_GET_LENGTH(prefix) : 0;
    const char *prefix_text = prefix ? (const char *)PyUnicode_DATA(prefix) : "";
    if (all_pass_escape(raw, len)) {
        PyObject *out = PyUnicode_New(prefix_len + len, 127);
        if (out != NULL) {
            memcpy(PyUnicode_DATA(out), prefix_text, (size_t)prefix_len);
            memcpy((char *)PyUnicode_DATA(out) + prefix_len, raw, (size_t)len);
        }
        return out;
    }
    if (len > (PY_SSIZE_T_MAX - prefix_len) / 3)
        return PyErr_NoMemory();
    char stack[1024];
    stack[0] = 0; /* escape_into writes at least one byte here; gcc cannot tell */
    Py_ssize_t room = prefix_len + 3 * len;
    char *buffer = room <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc((size_t)room);
    if (buffer == NULL)
        return PyErr_NoMemory();
    memcpy(buffer, prefix_text, (size_t)prefix_len);
    char *end = escape_into(buffer + prefix_len, raw, len);
    PyObject *out = PyUnicode_DecodeUTF8(buffer, end - buffer, "strict");
    if (buffer != stack)
        PyMem_Free(buffer);
    return out;
}

#endif
