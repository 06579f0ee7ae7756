/*
 * Part of assembler/csrc/coalesce.c (EXECVE argument lists, coalesce.py's _execve_arguments): included by it once, so the module stays one
 * translation unit (setup.py and the build command compile coalesce.c alone).
 */
#ifndef AUDITSTREAM_COALESCE_EXECVE_H
#define AUDITSTREAM_COALESCE_EXECVE_H

/* ------------------------------------------------------------------------------------------ */
/* EXECVE: coalesce.py's _execve_arguments over the event's EXECVE bodies.                     */

enum TokenKind { T_ARGC, T_WHOLE, T_LEN, T_PIECE, T_IGNORED };

typedef struct {
    const char *value; /* as in the body: quotes kept */
    Py_ssize_t value_len;
    Py_ssize_t index, part; /* aN / aN[i]; -1 when not canonical (never looked up) */
    Py_ssize_t order;
    enum TokenKind kind;
} ExecToken;

typedef struct {
    ExecToken *tokens;
    Py_ssize_t count, capacity;
} ExecTokens;

/* A canonical decimal ("0", "12", not "012"), below 10^9: its value, else -1. */
static Py_ssize_t canonical_number(const char *text, Py_ssize_t len) {
    if (len == 0 || len > 9 || (len > 1 && text[0] == '0'))
        return -1;
    Py_ssize_t value = 0;
    for (Py_ssize_t i = 0; i < len; i++)
        value = value * 10 + (text[i] - '0');
    return value;
}


/* Name of an EXECVE token (argc, aN, aN_len, aN[i]); DECLINE for anything else. */
static int parse_exec_name(const char *name, Py_ssize_t len, ExecToken *tok) {
    tok->index = tok->part = -1;
    if (len == 4 && memcmp(name, "argc", 4) == 0) {
        tok->kind = T_ARGC;
        return OK;
    }
    if (len < 2 || name[0] != 'a')
        return DECLINE;
    Py_ssize_t digits = digit_run(name + 1, len - 1);
    if (digits == 0)
        return DECLINE;
    Py_ssize_t index = canonical_number(name + 1, digits);
    const char *rest = name + 1 + digits;
    Py_ssize_t rest_len = len - 1 - digits;
    if (rest_len == 0) {
        tok->kind = index < 0 ? T_IGNORED : T_WHOLE;
    } else if (rest_len == 4 && memcmp(rest, "_len", 4) == 0) {
        tok->kind = T_LEN;
    } else {
        Py_ssize_t part_digits = rest_len > 2 && rest[0] == '[' ? digit_run(rest + 1, rest_len - 1) : 0;
        if (part_digits == 0 || part_digits + 2 != rest_len || rest[rest_len - 1] != ']')
            return DECLINE;
        Py_ssize_t part = canonical_number(rest + 1, part_digits);
        tok->kind = index < 0 || part < 0 ? T_IGNORED : T_PIECE;
        tok->part = part;
    }
    tok->index = index;
    return OK;
}

/* Value of an EXECVE token: "…" without quotes inside, or bare without quotes, not empty. */
static int check_exec_value(const char *value, Py_ssize_t len) {
    if (len == 0)
        return DECLINE;
    if (value[0] == '"') {
        if (len < 2 || value[len - 1] != '"' || memchr(value + 1, '"', (size_t)(len - 2)) != NULL)
            return DECLINE;
        return OK;
    }
    return memchr(value, '"', (size_t)len) == NULL ? OK : DECLINE;
}

static int add_exec_token(ExecTokens *all, const char *token, Py_ssize_t len) {
    const char *equals = memchr(token, '=', (size_t)len);
    if (equals == NULL)
        return DECLINE;
    ExecToken tok;
    if (parse_exec_name(token, equals - token, &tok) != OK)
        return DECLINE;
    tok.value = equals + 1;
    tok.value_len = len - (equals + 1 - token);
    if (check_exec_value(tok.value, tok.value_len) != OK)
        return DECLINE;
    if (all->count == all->capacity) {
        Py_ssize_t capacity = all->capacity ? all->capacity * 2 : 64;
        ExecToken *grown = PyMem_Realloc(all->tokens, (size_t)capacity * sizeof(ExecToken));
        if (grown == NULL) {
            PyErr_NoMemory();
            return FAILED;
        }
        all->tokens = grown;
        all->capacity = capacity;
    }
    tok.order = all->count;
    all->tokens[all->count++] = tok;
    return OK;
}

/* Split one EXECVE body: printable ASCII tokens at single spaces. */
static int split_exec_body(ExecTokens *all, const char *body, Py_ssize_t len) {
    if (len == 0)
        return DECLINE;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i <= len; i++) {
        if (i < len) {
            unsigned char c = (unsigned char)body[i];
            if (c < 0x20 || c > 0x7e)
                return DECLINE;
            if (c != ' ')
                continue;
        }
        if (i == start)
            return DECLINE; /* leading, trailing or double space */
        int rc = add_exec_token(all, body + start, i - start);
        if (rc != OK)
            return rc;
        start = i + 1;
    }
    return OK;
}

/* _execve_value, then the text up to the first NUL, escaped. Appends bytes to buffer. */
static Py_ssize_t exec_value_bytes(const ExecToken *tok, unsigned char *out) {
    const char *value = tok->value;
    Py_ssize_t len = tok->value_len;
    if (len >= 2 && value[0] == '"' && value[len - 1] == '"') {
        memcpy(out, value + 1, (size_t)(len - 2));
        return len - 2;
    }
    if (is_upper_hex(value, len)) {
        decode_upper_hex(value, len, out);
        return len / 2;
    }
    memcpy(out, value, (size_t)len);
    return len;
}

static int compare_pieces(const void *left, const void *right) {
    const ExecToken *a = left, *b = right;
    if (a->index != b->index)
        return a->index < b->index ? -1 : 1;
    if (a->part != b->part)
        return a->part < b->part ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* One argument's text from its pieces (aN[0], aN[1]… while present; first token wins). */
static PyObject *argument_text(const ExecToken *whole, const ExecToken *pieces, Py_ssize_t count) {
    Py_ssize_t size = whole ? whole->value_len : 0;
    for (Py_ssize_t k = 0; k < count; k++)
        size += pieces[k].value_len;
    unsigned char *buffer = PyMem_Malloc((size_t)size + 1);
    if (buffer == NULL)
        return PyErr_NoMemory();
    Py_ssize_t used = 0;
    if (whole != NULL) {
        used = exec_value_bytes(whole, buffer);
    } else {
        Py_ssize_t expected = 0;
        for (Py_ssize_t k = 0; k < count && pieces[k].part <= expected; k++)
            if (pieces[k].part == expected) {
                used += exec_value_bytes(&pieces[k], buffer + used);
                expected++;
            }
    }
    unsigned char *nul = memchr(buffer, 0, (size_t)used);
    PyObject *text = escape_bytes(buffer, nul ? nul - buffer : used);
    PyMem_Free(buffer);
    return text;
}

/* The arguments tuple; DECLINE when an argument is missing (Python warns). */
static int collect_arguments(ExecTokens *all, Py_ssize_t argc, PyObject **args_out) {
    const ExecToken **whole = PyMem_Calloc((size_t)argc + 1, sizeof(ExecToken *));
    ExecToken *pieces = PyMem_Malloc((size_t)all->count * sizeof(ExecToken) + 1);
    PyObject *args = PyTuple_New(argc);
    int rc = (whole && pieces && args) ? OK : FAILED;
    if (rc == FAILED && !PyErr_Occurred())
        PyErr_NoMemory();
    Py_ssize_t npieces = 0;
    for (Py_ssize_t k = 0; rc == OK && k < all->count; k++) {
        const ExecToken *tok = &all->tokens[k];
        if (tok->kind == T_WHOLE && tok->index < argc && whole[tok->index] == NULL)
            whole[tok->index] = tok;
        else if (tok->kind == T_PIECE && tok->index < argc)
            pieces[npieces++] = *tok;
    }
    if (rc == OK)
        qsort(pieces, (size_t)npieces, sizeof(ExecToken), compare_pieces);
    Py_ssize_t next = 0; /* first piece of the current index */
    for (Py_ssize_t index = 0; rc == OK && index < argc; index++) {
        while (next < npieces && pieces[next].index < index)
            next++;
        Py_ssize_t end = next;
        while (end < npieces && pieces[end].index == index)
            end++;
        if (whole[index] == NULL && (end == next || pieces[next].part != 0)) {
            rc = DECLINE; /* "failed to find arg aN" */
            break;
        }
        PyObject *text = argument_text(whole[index], pieces + next, end - next);
        if (text == NULL)
            rc = FAILED;
        else
            PyTuple_SET_ITEM(args, index, text);
    }
    PyMem_Free(whole);
    PyMem_Free(pieces);
    if (rc == OK)
        *args_out = args;
    else
        Py_XDECREF(args);
    return rc;
}

/* argc text and arguments of the EXECVE bodies; DECLINE wherever Python adds a warning. */
static int execve_arguments(PyObject **bodies, Py_ssize_t count, PyObject **argc_out, PyObject **args_out) {
    ExecTokens all = {NULL, 0, 0};
    int rc = OK;
    for (Py_ssize_t k = 0; rc == OK && k < count; k++)
        rc = split_exec_body(&all, PyBytes_AS_STRING(bodies[k]), PyBytes_GET_SIZE(bodies[k]));
    const ExecToken *argc_token = NULL;
    for (Py_ssize_t k = 0; rc == OK && k < all.count && argc_token == NULL; k++)
        if (all.tokens[k].kind == T_ARGC)
            argc_token = &all.tokens[k];
    if (rc == OK && argc_token == NULL)
        rc = DECLINE; /* "argc key not found" */
    Py_ssize_t argc = 0;
    if (rc == OK) {
        const char *text = argc_token->value;
        Py_ssize_t len = argc_token->value_len;
        if (len > 10 || digit_run(text, len) != len)
            rc = DECLINE; /* "failed to convert argc" */
        for (Py_ssize_t i = 0; rc == OK && i < len; i++)
            argc = argc * 10 + (text[i] - '0');
        if (rc == OK && argc > all.count)
            rc = DECLINE; /* each argument needs a token of its own: one is missing */
    }
    if (rc == OK) {
        *argc_out = ascii_str(argc_token->value, argc_token->value_len);
        rc = *argc_out ? collect_arguments(&all, argc, args_out) : FAILED;
        if (rc != OK)
            Py_CLEAR(*argc_out);
    }
    PyMem_Free(all.tokens);
    return rc;
}

#endif
