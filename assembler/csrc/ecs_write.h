/* write_doc: an audit event's document written as JSON text straight from its records and
 * Coalesced, without the doc's dicts (included once, by ecs.c, after build()).
 *
 * The text is byte for byte orjson.dumps(build_doc(records, coalesced)) with the
 * assembler's `completed_by` added, and the head is what auditstream/doc_text.py's
 * encode_docs makes of that doc: building the doc's ~15 dicts, encoding them with orjson
 * and freeing them was ~60 % of an assembler's per-event CPU (docs/performance.md,
 * "Nineteenth pass"). The small parts that need Python's rules (user, data with socket
 * fields, addresses) are still built as dicts by ecs.c's helpers and written here; the
 * rest is written from the Coalesced's own strings.
 *
 * Declined (None), besides what build() declines: an event that has ECS entities (they
 * are filled by Python code into the doc), one without process fields (its doc does not
 * travel split), and any value orjson would refuse or that this writer does not write
 * (a str with a lone surrogate, an int beyond 64 bits, a float, a type that is not
 * exactly dict, list, tuple, str, int, bool or None, nesting deeper than WRITE_MAX_DEPTH).
 * The caller then builds the dict, and encoding it says what orjson says.
 */

#define WRITE_MAX_DEPTH 32

#include "out_buffer.h"

/* Kept between calls (one doc at a time, under the GIL): no allocation per event. */
static Out doc_out, head_out;
static int writing; /* a Python helper called back into write_doc: decline */
static PyTypeObject *written_doc_type;

/* orjson's escapes: '"', '\\' and every byte below 0x20; everything else as it is. */
static const char *const short_escapes[32] = {
    ['\b'] = "\\b", ['\t'] = "\\t", ['\n'] = "\\n", ['\f'] = "\\f", ['\r'] = "\\r"};

/* The escape of one byte that needs it, at out; returns the end. */
static inline char *put_escape(char *out, unsigned char byte)
{
    static const char hex[] = "0123456789abcdef";
    if (byte == '"' || byte == '\\') {
        *out++ = '\\';
        *out++ = (char)byte;
    } else if (short_escapes[byte] != NULL) {
        memcpy(out, short_escapes[byte], 2);
        out += 2;
    } else {
        memcpy(out, "\\u00", 4);
        out[4] = hex[byte >> 4];
        out[5] = hex[byte & 15];
        out += 6;
    }
    return out;
}

/* Nonzero when one of the 8 bytes of word is below 0x20, '"' or '\\' (the bit tricks
 * of "Bit Twiddling Hacks": haszero, hasless). */
static inline uint64_t word_needs_escape(uint64_t word)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t quote = word ^ (ones * '"'), backslash = word ^ (ones * '\\');
    uint64_t below_space = (word - ones * 0x20) & ~word;
    return (below_space | ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash)) & highs;
}

/* Room past a string's end that put_utf8_string may overwrite: it stores whole words. */
#define WORD_SLACK 8
#define SPACES 0x2020202020202020ULL /* never escaped: the padding of a short word */

/* The n (< 8) bytes at text as a word, padded with spaces; reads only those bytes. */
static inline uint64_t short_word(const unsigned char *text, Py_ssize_t n)
{
    uint64_t word;
    if (n >= 4) {
        uint32_t low, high;
        memcpy(&low, text, 4);
        memcpy(&high, text + n - 4, 4);
        word = low | (uint64_t)high << (8 * (n - 4));
    } else if (n > 0) {
        word = text[0] | (uint64_t)text[n / 2] << (8 * (n / 2)) | (uint64_t)text[n - 1] << (8 * (n - 1));
    } else {
        return SPACES;
    }
    return word | SPACES << (8 * n);
}

/* Escape what needs it from the lowest flagged byte of a word: the flags of
 * word_needs_escape can be wrong only above a byte that truly needs it (a borrow). */
#define FIRST_FLAGGED(mask) (__builtin_ctzll(mask) >> 3)

/* text as a JSON string. It goes a word at a time, each word stored whole (the slack
 * takes what lies past the end) and the output moved on by the bytes that count: most
 * strings are short and need no escape, and none of them costs a call to memcpy. */
static inline int put_utf8_string(Out *o, const unsigned char *text, Py_ssize_t len)
{
    if (out_reserve(o, len * 6 + 2 + WORD_SLACK) < 0)
        return -1;
    char *out = o->data + o->size;
    *out++ = '"';
    Py_ssize_t i = 0;
    uint64_t word, mask;
    while (i + 8 <= len) {
        memcpy(&word, text + i, 8);
        mask = word_needs_escape(word);
        memcpy(out, &word, 8);
        if (!mask) {
            out += 8;
            i += 8;
            continue;
        }
        int first = FIRST_FLAGGED(mask);
        out = put_escape(out + first, text[i + first]);
        i += first + 1;
    }
    while (i < len) {
        Py_ssize_t rest = len - i; /* 1 .. 7 */
        if (len >= 8) {
            memcpy(&word, text + len - 8, 8);
            word = word >> (8 * (8 - rest)) | SPACES << (8 * rest);
        } else {
            word = short_word(text + i, rest);
        }
        mask = word_needs_escape(word);
        memcpy(out, &word, 8);
        if (!mask) {
            out += rest;
            break;
        }
        int first = FIRST_FLAGGED(mask);
        out = put_escape(out + first, text[i + first]);
        i += first + 1;
    }
    *out++ = '"';
    o->size = out - o->data;
    return 0;
}

/* A str as orjson writes it; -1 with an exception on error, without one to decline. */
static inline int put_str(Out *o, PyObject *text)
{
    if (!PyUnicode_CheckExact(text))
        return -1;
    if (PyUnicode_IS_ASCII(text))
        return put_utf8_string(o, PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text));
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &len);
    if (utf8 == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            PyErr_Clear(); /* a lone surrogate: orjson refuses it, Python's path says so */
        return -1;
    }
    return put_utf8_string(o, (const unsigned char *)utf8, len);
}

/* An int as orjson writes it: -2**63 .. 2**64-1, else decline (orjson refuses it). */
static int put_int_value(Out *o, PyObject *number)
{
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(number, &overflow);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        unsigned long long big = PyLong_AsUnsignedLongLong(number);
        if (big == (unsigned long long)-1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError))
                PyErr_Clear();
            return -1;
        }
        return put_unsigned(o, big, 0);
    }
    if (overflow < 0)
        return -1;
    return put_signed(o, value);
}

/* A JSON value of exact dict (str keys), list, tuple, str, int, bool or None. */
static int put_value(Out *o, PyObject *value, int depth)
{
    if (PyUnicode_CheckExact(value))
        return put_str(o, value);
    if (depth > WRITE_MAX_DEPTH)
        return -1;
    if (PyDict_CheckExact(value)) {
        if (PUT_LIT(o, "{") < 0)
            return -1;
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        int first = 1;
        while (PyDict_Next(value, &pos, &key, &item)) {
            if (!PyUnicode_CheckExact(key) || (!first && PUT_LIT(o, ",") < 0) ||
                put_str(o, key) < 0 || PUT_LIT(o, ":") < 0)
                return -1;
            /* item is borrowed from a dict only this call's caller owns: no code runs */
            if (put_value(o, item, depth + 1) < 0)
                return -1;
            first = 0;
        }
        return PUT_LIT(o, "}");
    }
    if (PyList_CheckExact(value) || PyTuple_CheckExact(value)) {
        Py_ssize_t count = PySequence_Fast_GET_SIZE(value);
        PyObject **items = PySequence_Fast_ITEMS(value);
        if (PUT_LIT(o, "[") < 0)
            return -1;
        for (Py_ssize_t i = 0; i < count; i++)
            if ((i && PUT_LIT(o, ",") < 0) || put_value(o, items[i], depth + 1) < 0)
                return -1;
        return PUT_LIT(o, "]");
    }
    if (PyLong_CheckExact(value))
        return put_int_value(o, value);
    if (value == Py_True)
        return PUT_LIT(o, "true");
    if (value == Py_False)
        return PUT_LIT(o, "false");
    if (value == Py_None)
        return PUT_LIT(o, "null");
    return -1; /* a float, a subclass, anything else: the dict path and orjson decide */
}

/* ,"key": (or "key": for the first key of an object); key_len is strlen(key) */
static int put_key_len(Out *o, int *first, const char *key, Py_ssize_t key_len)
{
    if (out_reserve(o, key_len + 4) < 0)
        return -1;
    char *out = o->data + o->size;
    if (!*first)
        *out++ = ',';
    *first = 0;
    *out++ = '"';
    memcpy(out, key, (size_t)key_len);
    out += key_len;
    *out++ = '"';
    *out++ = ':';
    o->size = out - o->data;
    return 0;
}

#define put_key(o, first, key) put_key_len((o), (first), (key), (Py_ssize_t)strlen(key))

/* "key":"text" when text is not empty */
static int put_nonempty_str(Out *o, int *first, const char *key, PyObject *text)
{
    if (!nonempty_str(text))
        return 0;
    return put_key(o, first, key) < 0 ? -1 : put_str(o, text);
}

#include "ecs_fused.h"

/* ---- the parts of the doc build() makes as dicts ------------------------------------- */

static int write_event(Out *o, CoalescedView *c)
{
    int first = 0; /* after kind and module */
    if (PUT_LIT(o, "{\"kind\":\"event\",\"module\":\"auditd\"") < 0)
        return -1;
    if (put_nonempty_str(o, &first, "action", c->field[C_ACTION]) < 0 ||
        put_key(o, &first, "outcome") < 0 || put_str(o, outcome_of(c)) < 0 ||
        put_key(o, &first, "sequence") < 0 || put_int_value(o, c->field[C_SERIAL]) < 0)
        return -1;
    if (PyTuple_GET_SIZE(c->field[C_ECS_CATEGORY]) > 0 &&
        (put_key(o, &first, "category") < 0 || put_value(o, c->field[C_ECS_CATEGORY], 1) < 0))
        return -1;
    if (PyTuple_GET_SIZE(c->field[C_ECS_TYPE]) > 0 &&
        (put_key(o, &first, "type") < 0 || put_value(o, c->field[C_ECS_TYPE], 1) < 0))
        return -1;
    return PUT_LIT(o, "}");
}

static int write_summary(Out *o, CoalescedView *c)
{
    int first = 1;
    PyObject *primary = c->field[C_ACTOR_PRIMARY], *secondary = c->field[C_ACTOR_SECONDARY];
    if (PUT_LIT(o, "{") < 0)
        return -1;
    if (nonempty_str(primary) || nonempty_str(secondary)) {
        int inner = 1;
        if (put_key(o, &first, "actor") < 0 || PUT_LIT(o, "{") < 0 ||
            put_nonempty_str(o, &inner, "primary", primary) < 0 ||
            put_nonempty_str(o, &inner, "secondary", secondary) < 0 || PUT_LIT(o, "}") < 0)
            return -1;
    }
    PyObject *object_type = c->field[C_OBJECT_TYPE];
    primary = c->field[C_OBJECT_PRIMARY];
    secondary = c->field[C_OBJECT_SECONDARY];
    if (nonempty_str(object_type) || nonempty_str(primary) || nonempty_str(secondary)) {
        int inner = 1;
        if (put_key(o, &first, "object") < 0 || PUT_LIT(o, "{") < 0 ||
            put_nonempty_str(o, &inner, "type", object_type) < 0 ||
            put_nonempty_str(o, &inner, "primary", primary) < 0 ||
            put_nonempty_str(o, &inner, "secondary", secondary) < 0 || PUT_LIT(o, "}") < 0)
            return -1;
    }
    if (put_nonempty_str(o, &first, "how", c->field[C_HOW]) < 0)
        return -1;
    return PUT_LIT(o, "}");
}

/* "records":[...] with hash() of each record's text into hashes (count of records).
 * A record whose text is its ASCII prefix and its data as is (escape() changes nothing:
 * most records) is written and hashed from one buffer, without making the str: hash() of
 * an ASCII str is _Py_HashBytes of its bytes (Objects/unicodeobject.c), so the head's
 * fingerprints stay those of the text. */
static int write_records(Out *o, PyObject *records, Py_hash_t *hashes)
{
    Py_ssize_t count = PyTuple_GET_SIZE(records);
    if (PUT_LIT(o, "[") < 0)
        return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *data;
        PyObject *prefix = record_prefix_and_data(PyTuple_GET_ITEM(records, i), &data);
        if (prefix == NULL || (i && PUT_LIT(o, ",") < 0)) {
            Py_XDECREF(prefix);
            return -1;
        }
        Py_ssize_t prefix_len = PyUnicode_GET_LENGTH(prefix), len = PyBytes_GET_SIZE(data);
        int rc;
        if (PyUnicode_IS_ASCII(prefix) &&
            all_pass_escape((const unsigned char *)PyBytes_AS_STRING(data), len)) {
            char stack[2048];
            char *text = prefix_len + len <= (Py_ssize_t)sizeof(stack)
                             ? stack : PyMem_Malloc((size_t)(prefix_len + len));
            if (text == NULL) {
                PyErr_NoMemory();
                rc = -1;
            } else {
                memcpy(text, PyUnicode_DATA(prefix), (size_t)prefix_len);
                memcpy(text + prefix_len, PyBytes_AS_STRING(data), (size_t)len);
                hashes[i] = _Py_HashBytes(text, prefix_len + len);
                rc = put_utf8_string(o, (const unsigned char *)text, prefix_len + len);
                if (text != stack)
                    PyMem_Free(text);
            }
        } else {
            PyObject *text = prefixed_text(prefix, data);
            rc = text == NULL || (hashes[i] = PyObject_Hash(text)) == -1 || put_str(o, text) < 0
                     ? -1 : 0;
            Py_XDECREF(text);
        }
        Py_DECREF(prefix);
        if (rc < 0)
            return -1;
    }
    return PUT_LIT(o, "]");
}

/* "data":{...} of the head: syscall, exit and a0 of the doc's data, those it has. */
static int write_head_data(Out *o, PyObject *data)
{
    static const char *const names[] = {"syscall", "exit", "a0"};
    PyObject *const keys[] = {s_syscall, s_exit, s_a0};
    int first = 1;
    if (PUT_LIT(o, "{") < 0)
        return -1;
    for (int i = 0; i < 3; i++) {
        PyObject *value = PyDict_GetItemWithError(data, keys[i]);
        if (value == NULL && PyErr_Occurred())
            return -1;
        if (value != NULL && (put_key(o, &first, names[i]) < 0 || put_value(o, value, 2) < 0))
            return -1;
    }
    return PUT_LIT(o, "}");
}

static int write_auditd(Out *o, PyObject *records, CoalescedView *c, PyObject *data,
                        Py_hash_t *hashes, const FusedEvent *fused)
{
    int first = 0;
    PyObject *session = c->field[C_SESSION];
    if (PUT_LIT(o, "{\"message_type\":") < 0 || put_str(o, c->field[C_RECORD_TYPE]) < 0 ||
        put_key(o, &first, "category") < 0 || put_str(o, c->field[C_CATEGORY]) < 0 ||
        put_key(o, &first, "sequence") < 0 || put_int_value(o, c->field[C_SERIAL]) < 0 ||
        put_key(o, &first, "result") < 0 || put_str(o, c->field[C_RESULT]) < 0 ||
        put_key(o, &first, "data") < 0 ||
        (fused ? put_fields(o, fused->data, fused->n_data) : put_value(o, data, 2)) < 0)
        return -1;
    if (nonempty_str(session) && !str_equals_ascii(session, "unset") &&
        (put_key(o, &first, "session") < 0 || put_str(o, session) < 0))
        return -1;
    if (put_key(o, &first, "summary") < 0 || write_summary(o, c) < 0)
        return -1;
    if (fused ? fused->n_paths > 0 && (put_key(o, &first, "paths") < 0 || put_paths(o, fused) < 0)
              : PyList_GET_SIZE(c->field[C_PATHS]) > 0 &&
                    (put_key(o, &first, "paths") < 0 || put_value(o, c->field[C_PATHS], 2) < 0))
        return -1;
    if (put_key(o, &first, "records") < 0 || write_records(o, records, hashes) < 0)
        return -1;
    return PUT_LIT(o, "}");
}

/* _process_fields, written; 0 when it is empty (declined by the caller). */
static int write_process(Out *o, CoalescedView *c, int *written)
{
    int first = 1;
    PyObject *number = NULL, *args = c->field[C_ARGS];
    if (PUT_LIT(o, "{") < 0)
        return -1;
    int found = as_int(c->field[C_PID], &number);
    if (found < 0 || (found && (put_key(o, &first, "pid") < 0 || put_int_value(o, number) < 0))) {
        Py_XDECREF(number);
        return -1;
    }
    Py_CLEAR(number);
    found = as_int(c->field[C_PPID], &number);
    if (found < 0 || (found && (put_key(o, &first, "parent") < 0 ||
                                PUT_LIT(o, "{\"pid\":") < 0 || put_int_value(o, number) < 0 ||
                                PUT_LIT(o, "}") < 0))) {
        Py_XDECREF(number);
        return -1;
    }
    Py_CLEAR(number);
    if (put_nonempty_str(o, &first, "title", c->field[C_TITLE]) < 0 ||
        put_nonempty_str(o, &first, "name", c->field[C_NAME]) < 0 ||
        put_nonempty_str(o, &first, "executable", c->field[C_EXE]) < 0 ||
        put_nonempty_str(o, &first, "working_directory", c->field[C_CWD]) < 0)
        return -1;
    if (PyTuple_GET_SIZE(args) > 0 &&
        (put_key(o, &first, "args") < 0 || put_value(o, args, 2) < 0 ||
         put_key(o, &first, "args_count") < 0 ||
         put_unsigned(o, (unsigned long long)PyTuple_GET_SIZE(args), 0) < 0))
        return -1;
    *written = !first;
    return PUT_LIT(o, "}");
}

/* An address as its dict (ecs.c's address_fields), written. */
static int write_address(Out *o, int *first, const char *key, PyObject *address)
{
    if (address == Py_None)
        return 0;
    PyObject *fields = address_fields(address);
    if (fields == NULL)
        return -1;
    int rc = put_key(o, first, key) < 0 || put_value(o, fields, 1) < 0 ? -1 : 0;
    Py_DECREF(fields);
    return rc;
}

/* process, file, source … error, and completed_by (add_tail_fields' order); the
 * process's value goes between *at and *until. */
static int write_tail(Out *o, CoalescedView *c, PyObject *completed_by, Py_ssize_t *at,
                      Py_ssize_t *until, const FusedEvent *fused)
{
    int first = 0, written = 0;
    if (put_key(o, &first, "process") < 0)
        return -1;
    *at = o->size;
    if (write_process(o, c, &written) < 0 || !written)
        return -1;
    *until = o->size;
    if (fused ? fused->has_file && (put_key(o, &first, "file") < 0 || put_file(o, fused) < 0)
              : c->field[C_FILE] != Py_None &&
                    (put_key(o, &first, "file") < 0 || put_value(o, c->field[C_FILE], 1) < 0))
        return -1;
    if (write_address(o, &first, "source", c->field[C_SOURCE]) < 0 ||
        write_address(o, &first, "destination", c->field[C_DESTINATION]) < 0)
        return -1;
    if (nonempty_str(c->field[C_DIRECTION]) &&
        (put_key(o, &first, "network") < 0 || PUT_LIT(o, "{\"direction\":") < 0 ||
         put_str(o, c->field[C_DIRECTION]) < 0 || PUT_LIT(o, "}") < 0))
        return -1;
    if (nonempty_str(c->field[C_NODE])) {
        PyObject *name = host_name(c->field[C_NODE]);
        int rc = name == NULL || put_key(o, &first, "host") < 0 ||
                 PUT_LIT(o, "{\"name\":") < 0 || put_str(o, name) < 0 || PUT_LIT(o, "}") < 0;
        Py_XDECREF(name);
        if (rc)
            return -1;
    }
    if (PyList_GET_SIZE(c->field[C_TAGS]) > 0 &&
        (put_key(o, &first, "tags") < 0 || put_value(o, c->field[C_TAGS], 1) < 0))
        return -1;
    if (PyList_GET_SIZE(c->field[C_WARNINGS]) > 0 &&
        (put_key(o, &first, "error") < 0 || PUT_LIT(o, "{\"message\":") < 0 ||
         put_value(o, c->field[C_WARNINGS], 2) < 0 || PUT_LIT(o, "}") < 0))
        return -1;
    if (completed_by != Py_None &&
        (put_key(o, &first, "auditstream") < 0 || PUT_LIT(o, "{\"completed_by\":") < 0 ||
         put_str(o, completed_by) < 0 || PUT_LIT(o, "}") < 0))
        return -1;
    return PUT_LIT(o, "}");
}

/* The head (doc_text._encode_split's): process's place (null: the tree keeper decodes the
 * doc's own text of it), auditd.result, the record hashes (hash_hex.h's text), auditd.data's
 * syscall/exit/a0, @timestamp. */
static int write_head(Out *h, CoalescedView *c, PyObject *data, const Py_hash_t *hashes,
                      Py_ssize_t count, PyObject *timestamp, const FusedEvent *fused)
{
    if (PUT_LIT(h, "{\"process\":null,\"auditd\":{\"result\":") < 0 ||
        put_str(h, c->field[C_RESULT]) < 0 ||
        PUT_LIT(h, ",\"record_hashes\":\"") < 0 ||
        out_reserve(h, count * HASH_HEX_DIGITS) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < count; i++, h->size += HASH_HEX_DIGITS)
        hash_hex_write(h->data + h->size, (int64_t)hashes[i]);
    if (PUT_LIT(h, "\",\"data\":") < 0 ||
        (fused ? write_fused_head_data(h, fused) : write_head_data(h, data)) < 0 ||
        PUT_LIT(h, "},\"@timestamp\":") < 0 || put_str(h, timestamp) < 0)
        return -1;
    return PUT_LIT(h, "}");
}

/* 1 when the user object is the kernel layout's, written by write_kernel_user: every id
 * of a kernel SYSCALL record set, in its order, and no ENRICHED names (most events). */
static int kernel_user_applies(PyObject *records, CoalescedView *c)
{
    PyObject *ids = c->field[C_USER_IDS], *enriched = primary_enriched(records);
    return enriched != NULL && PyBytes_CheckExact(enriched) && PyBytes_GET_SIZE(enriched) == 0 &&
           ids_are_text(ids) && is_kernel_layout(ids);
}

/* ,"name":{"id":id} or ,"name":{"id":id,"group":{"id":group}} */
static int put_id_object(Out *o, const char *name, PyObject *id, PyObject *group)
{
    int first = 0;
    if (put_key(o, &first, name) < 0 || PUT_LIT(o, "{\"id\":") < 0 || put_str(o, id) < 0)
        return -1;
    if (group != NULL &&
        (PUT_LIT(o, ",\"group\":{\"id\":") < 0 || put_str(o, group) < 0 || PUT_LIT(o, "}") < 0))
        return -1;
    return PUT_LIT(o, "}");
}

/* The user object user_fields and drop_repeated_effective make of the kernel layout,
 * written without its six dicts: effective goes when it repeats a non-empty user id. */
static int write_kernel_user_values(Out *o, CoalescedView *c, PyObject *const *v,
                                    const FusedEvent *fused)
{
    PyObject *selinux = c->field[C_USER_SELINUX];
    int repeated = PyUnicode_GET_LENGTH(v[1]) > 0 && PyUnicode_Compare(v[3], v[1]) == 0;
    if (PUT_LIT(o, "{\"audit\":{\"id\":") < 0 || put_str(o, v[0]) < 0 ||
        PUT_LIT(o, "},\"id\":") < 0 || put_str(o, v[1]) < 0 ||
        put_id_object(o, "group", v[2], NULL) < 0 ||
        (!repeated && put_id_object(o, "effective", v[3], v[6]) < 0) ||
        put_id_object(o, "saved", v[4], v[7]) < 0 ||
        put_id_object(o, "filesystem", v[5], v[8]) < 0)
        return -1;
    if (fused ? fused->n_selinux > 0 && (PUT_LIT(o, ",\"selinux\":") < 0 ||
                                         put_fields(o, fused->selinux, fused->n_selinux) < 0)
              : PyDict_GET_SIZE(selinux) > 0 &&
                    (PUT_LIT(o, ",\"selinux\":") < 0 || put_value(o, selinux, 2) < 0))
        return -1;
    return PUT_LIT(o, "}");
}

static int write_kernel_user(Out *o, CoalescedView *c)
{
    PyObject *v[ID_COUNT], *key; /* auid, uid, gid, euid, suid, fsuid, egid, sgid, fsgid */
    Py_ssize_t pos = 0;
    for (int i = 0; i < ID_COUNT; i++)
        if (!PyDict_Next(c->field[C_USER_IDS], &pos, &key, &v[i]))
            return -1; /* not reached: kernel_user_applies counted them */
    return write_kernel_user_values(o, c, v, NULL);
}

/* Any other layout of the known ids (some unset, another order), without ENRICHED names:
 * the user object that general_user, the SELinux copy and drop_repeated_effective make,
 * written without its dicts. A small tree kept in their insertion order stands in for them. */
enum { UN_ROOT, UN_AUDIT, UN_GROUP, UN_EFF, UN_EFF_GROUP, UN_SAVED, UN_SAVED_GROUP, UN_FS,
       UN_FS_GROUP, UN_COUNT };
static const int user_node_of_id[ID_COUNT] = {
    [ID_UID] = UN_ROOT,       [ID_GID] = UN_GROUP,      [ID_EUID] = UN_EFF,
    [ID_EGID] = UN_EFF_GROUP, [ID_SUID] = UN_SAVED,     [ID_SGID] = UN_SAVED_GROUP,
    [ID_FSUID] = UN_FS,       [ID_FSGID] = UN_FS_GROUP, [ID_AUID] = UN_AUDIT};
static const int user_node_parent[UN_COUNT] = {
    [UN_ROOT] = -1,      [UN_AUDIT] = UN_ROOT,    [UN_GROUP] = UN_ROOT,
    [UN_EFF] = UN_ROOT,  [UN_EFF_GROUP] = UN_EFF, [UN_SAVED] = UN_ROOT,
    [UN_SAVED_GROUP] = UN_SAVED, [UN_FS] = UN_ROOT, [UN_FS_GROUP] = UN_FS};
static const char *const user_node_name[UN_COUNT] = {
    "", "audit", "group", "effective", "group", "saved", "group", "filesystem", "group"};
#define UN_ID_ENTRY (-1)

typedef struct {
    PyObject *id;   /* borrowed from the ids dict; NULL: no "id" key */
    int entries[6]; /* keys in insertion order: UN_ID_ENTRY or a child node */
    int count;
    int made;       /* the node exists (its dict would) */
} UserNode;

/* child_dict along the node's parents: a node is made once, after its parent. */
static void user_node_make(UserNode *nodes, int node)
{
    if (nodes[node].made)
        return;
    int parent = user_node_parent[node];
    user_node_make(nodes, parent);
    nodes[parent].entries[nodes[parent].count++] = node;
    nodes[node].made = 1;
}

/* The ids in their order as id indices and values (borrowed), and their count; -1 unless
 * they are text, all of them known, and there are no ENRICHED names (the dict path then). */
static int general_user_ids(PyObject *records, CoalescedView *c, int *index, PyObject **values)
{
    PyObject *ids = c->field[C_USER_IDS], *enriched = primary_enriched(records);
    if (enriched == NULL || !PyBytes_CheckExact(enriched) || PyBytes_GET_SIZE(enriched) != 0 ||
        !PyDict_CheckExact(ids) || PyDict_GET_SIZE(ids) > ID_COUNT ||
        !PyDict_CheckExact(c->field[C_USER_SELINUX]))
        return -1;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    int count = 0;
    while (PyDict_Next(ids, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(value) ||
            (index[count] = id_field_index(key)) < 0)
            return -1; /* general_user nests an unknown one under its own name */
        values[count++] = value;
    }
    return count;
}

static int write_user_node(Out *o, const UserNode *nodes, int node, int skip)
{
    int first = 1;
    if (PUT_LIT(o, "{") < 0)
        return -1;
    for (int i = 0; i < nodes[node].count; i++) {
        int entry = nodes[node].entries[i];
        if (entry == skip)
            continue;
        if (entry == UN_ID_ENTRY
                ? put_key(o, &first, "id") < 0 || put_str(o, nodes[node].id) < 0
                : put_key(o, &first, user_node_name[entry]) < 0 ||
                      write_user_node(o, nodes, entry, skip) < 0 || PUT_LIT(o, "}") < 0)
            return -1;
    }
    return first; /* 1: nothing written after the brace */
}

static int write_general_user(Out *o, CoalescedView *c, const int *index, PyObject **values,
                              int count, const FusedEvent *fused)
{
    UserNode nodes[UN_COUNT];
    memset(nodes, 0, sizeof nodes);
    nodes[UN_ROOT].made = 1;
    PyObject *selinux = c->field[C_USER_SELINUX];
    for (int i = 0; i < count; i++) {
        if (str_equals_ascii(values[i], "unset"))
            continue;
        int node = user_node_of_id[index[i]]; /* one node per id: set once */
        user_node_make(nodes, node);
        nodes[node].entries[nodes[node].count++] = UN_ID_ENTRY;
        nodes[node].id = values[i];
    }
    /* drop_repeated_effective: effective goes when its id repeats a non-empty user id. */
    PyObject *mine = nodes[UN_ROOT].id, *theirs = nodes[UN_EFF].id;
    int skip = nodes[UN_EFF].made && mine != NULL && PyUnicode_GET_LENGTH(mine) > 0 &&
                       theirs != NULL && PyUnicode_Compare(theirs, mine) == 0
                   ? UN_EFF : -2;
    int empty = write_user_node(o, nodes, UN_ROOT, skip);
    if (empty < 0)
        return -1;
    if ((fused ? fused->n_selinux : PyDict_GET_SIZE(selinux)) > 0 &&
        ((empty ? PUT_LIT(o, "\"selinux\":") : PUT_LIT(o, ",\"selinux\":")) < 0 ||
         (fused ? put_fields(o, fused->selinux, fused->n_selinux) : put_value(o, selinux, 2)) < 0))
        return -1;
    return PUT_LIT(o, "}");
}

/* The whole doc and its head into doc_out and head_out; -1 (maybe an exception) else.
 * fused: the event's data, ids, paths and file are there (ecs_fused.h), not in c. */
static int write_all(PyObject *records, CoalescedView *c, PyObject *completed_by,
                     Py_ssize_t *at, Py_ssize_t *until, const FusedEvent *fused)
{
    PyObject *entities = c->field[C_ECS_ENTITIES];
    if (entities != Py_None && PyDict_GET_SIZE(entities) > 0)
        return -1; /* filled into the doc by Python code (_add_ecs_entities) */
    Py_ssize_t count = PyTuple_GET_SIZE(records);
    Py_hash_t *hashes = PyMem_Malloc(sizeof(Py_hash_t) * (size_t)count);
    PyObject *user = NULL, *timestamp = NULL, *data = NULL;
    PyObject *id_values[ID_COUNT], *fused_ids[ID_COUNT] = {NULL};
    int rc = -1, kernel_user = 0, id_index[ID_COUNT], id_count = -1;
    if (hashes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (fused != NULL) {
        id_count = fused_user_ids(records, fused, id_index, fused_ids, &kernel_user);
        if (id_count < 0)
            goto done;
        memcpy(id_values, fused_ids, sizeof id_values);
    } else {
        kernel_user = kernel_user_applies(records, c);
        id_count = kernel_user ? 0 : general_user_ids(records, c, id_index, id_values);
    }
    int direct_user = kernel_user || id_count >= 0;
    /* One at a time: none of them may run with another's exception pending. */
    if ((!direct_user && (user = user_fields(records, c)) == NULL) ||
        (timestamp = timestamp_text(c->field[C_SEC], c->field[C_MSEC])) == NULL ||
        (fused == NULL && (data = data_fields(c->field[C_DATA])) == NULL) ||
        (!direct_user && drop_repeated_effective(user) < 0))
        goto done;
    doc_out.size = head_out.size = 0;
    rc = PUT_LIT(&doc_out, "{\"@timestamp\":") < 0 || put_str(&doc_out, timestamp) < 0 ||
                 PUT_LIT(&doc_out, ",\"event\":") < 0 || write_event(&doc_out, c) < 0 ||
                 PUT_LIT(&doc_out, ",\"auditd\":") < 0 ||
                 write_auditd(&doc_out, records, c, data, hashes, fused) < 0 ||
                 PUT_LIT(&doc_out, ",\"user\":") < 0 ||
                 (kernel_user   ? (fused ? write_kernel_user_values(&doc_out, c, id_values, fused)
                                         : write_kernel_user(&doc_out, c))
                  : direct_user ? write_general_user(&doc_out, c, id_index, id_values, id_count,
                                                     fused)
                                : put_value(&doc_out, user, 1)) < 0 ||
                 write_tail(&doc_out, c, completed_by, at, until, fused) < 0 ||
                 write_head(&head_out, c, data, hashes, count, timestamp, fused) < 0
             ? -1
             : 0;
done:
    PyMem_Free(hashes);
    for (int i = 0; i < ID_COUNT; i++)
        Py_XDECREF(fused_ids[i]);
    Py_XDECREF(user);
    Py_XDECREF(timestamp);
    Py_XDECREF(data);
    return rc;
}

/* WrittenDoc(text, at, until, head): auditstream/doc_text.py's tuple. */
static PyObject *written_doc(Py_ssize_t at, Py_ssize_t until)
{
    PyObject *doc = written_doc_type->tp_alloc(written_doc_type, 4);
    if (doc == NULL)
        return NULL;
    PyObject *items[4] = {PyBytes_FromStringAndSize(doc_out.data, doc_out.size),
                          PyLong_FromSsize_t(at), PyLong_FromSsize_t(until),
                          PyBytes_FromStringAndSize(head_out.data, head_out.size)};
    for (int i = 0; i < 4; i++)
        PyTuple_SET_ITEM(doc, i, items[i]);
    for (int i = 0; i < 4; i++)
        if (items[i] == NULL) {
            Py_DECREF(doc);
            return NULL;
        }
    return doc;
}

/* write_all over the records (as a tuple) as a WrittenDoc; None: declined; NULL: an
 * exception. */
static PyObject *written_of(PyObject *records_list, CoalescedView *view,
                            PyObject *completed_by, const FusedEvent *fused)
{
    PyObject *records = PyList_AsTuple(records_list);
    if (records == NULL)
        return NULL;
    Py_ssize_t at = 0, until = 0;
    writing = 1;
    int rc = write_all(records, view, completed_by, &at, &until, fused);
    writing = 0;
    Py_DECREF(records);
    if (rc < 0) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    return written_doc(at, until);
}

/* write_doc(records, coalesced, completed_by) of Python: the WrittenDoc, None (declined)
 * or NULL with an exception. */
static PyObject *write_doc_of(PyObject *records_list, PyObject *coalesced, PyObject *completed_by)
{
    CoalescedView view;
    if (writing || !records_ok(records_list) || !read_coalesced(coalesced, &view))
        Py_RETURN_NONE;
    hold_view(&view, 1);
    PyObject *doc = written_of(records_list, &view, completed_by, NULL);
    hold_view(&view, 0);
    return doc;
}

static PyObject *py_write_doc(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || (args[2] != Py_None && !PyUnicode_CheckExact(args[2]))) {
        PyErr_SetString(PyExc_TypeError,
                        "write_doc(records, coalesced, completed_by: str | None) takes 3 arguments");
        return NULL;
    }
    return write_doc_of(args[0], args[1], args[2]);
}

/* ---- fused events (fused_event.h) -------------------------------------------------------- */

/* The Coalesced attributes a fused event holds as objects, and where in the view. */
static const int fused_view_slot[FE_COUNT] = {
    [FE_SEC] = C_SEC, [FE_MSEC] = C_MSEC, [FE_SERIAL] = C_SERIAL, [FE_NODE] = C_NODE,
    [FE_CATEGORY] = C_CATEGORY, [FE_RECORD_TYPE] = C_RECORD_TYPE, [FE_RESULT] = C_RESULT,
    [FE_SESSION] = C_SESSION, [FE_TAGS] = C_TAGS, [FE_ACTOR_PRIMARY] = C_ACTOR_PRIMARY,
    [FE_ACTOR_SECONDARY] = C_ACTOR_SECONDARY, [FE_ACTION] = C_ACTION,
    [FE_OBJECT_TYPE] = C_OBJECT_TYPE, [FE_OBJECT_PRIMARY] = C_OBJECT_PRIMARY,
    [FE_OBJECT_SECONDARY] = C_OBJECT_SECONDARY, [FE_HOW] = C_HOW, [FE_PID] = C_PID,
    [FE_PPID] = C_PPID, [FE_TITLE] = C_TITLE, [FE_NAME] = C_NAME, [FE_EXE] = C_EXE,
    [FE_CWD] = C_CWD, [FE_ARGS] = C_ARGS, [FE_ECS_CATEGORY] = C_ECS_CATEGORY,
    [FE_ECS_TYPE] = C_ECS_TYPE, [FE_ECS_OUTCOME] = C_ECS_OUTCOME, [FE_DIRECTION] = C_DIRECTION};

/* write_doc_of for a fused event: the WrittenDoc, None (declined: the Coalesced way) or
 * NULL with an exception. */
static PyObject *write_fused_doc(PyObject *records_list, const FusedEvent *ev,
                                 PyObject *completed_by)
{
    if (writing || !records_ok(records_list))
        Py_RETURN_NONE;
    CoalescedView view;
    for (int i = 0; i < C_COUNT; i++)
        view.field[i] = Py_None; /* data, user_ids, paths, file: in ev */
    view.field[C_USER_SELINUX] = fused_empty_dict; /* unread: ev->selinux is written */
    view.field[C_WARNINGS] = fused_empty_list;     /* anything that warns is declined */
    for (int k = 0; k < FE_COUNT; k++) {
        int i = fused_view_slot[k];
        if (ev->slot[k] == NULL || !kind_matches(ev->slot[k], coalesced_kinds[i]))
            Py_RETURN_NONE;
        view.field[i] = ev->slot[k];
    }
    return written_of(records_list, &view, completed_by, ev);
}

/* The fused API of native_coalesce, when coalesce is its C function; else NULL. */
static const FusedApi *fused_api_for(PyObject *coalesce)
{
    if (!fused_enabled || fused_api == NULL || !PyCFunction_Check(coalesce) ||
        PyCFunction_GET_FUNCTION(coalesce) != fused_api->coalesce)
        return NULL;
    return fused_api;
}

static int fused_ready(void)
{
    fused_empty_list = PyList_New(0);
    fused_empty_dict = fused_empty_list ? PyDict_New() : NULL;
    if (fused_empty_dict == NULL)
        return -1;
    const FusedApi *api = PyCapsule_Import(FUSED_CAPSULE, 0);
    if (api == NULL) {
        PyErr_Clear(); /* native_coalesce not built: every event goes the Coalesced way */
        return 0;
    }
    fused_api = api->version == FUSED_API_VERSION ? api : NULL;
    return 0;
}

static PyObject *py_fused_counts(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(KK)", fused_written, fused_unwritten);
}

static PyObject *py_set_fused(PyObject *module, PyObject *on)
{
    int value = PyObject_IsTrue(on);
    if (value < 0)
        return NULL;
    int was = fused_enabled;
    fused_enabled = value;
    return PyBool_FromLong(was);
}
