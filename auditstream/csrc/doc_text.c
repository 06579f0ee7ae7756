/* auditstream.native_doc_text: auditstream/doc_text.py's split_at_process() in C.
 *
 * Reference: auditstream/doc_text.py. For a doc whose text (orjson.dumps(doc)) holds the
 * key "process": once, the value's end is found by scanning the JSON text (strings and
 * their escapes skipped) instead of encoding `process` again and comparing; the head is
 * the same dict. Every other case (the key several times, shapes the Python function
 * refuses) gives what the Python function gives: None for the refusals, and the call of
 * `fallback(doc, text)` (the Python function) when the key occurs more than once. The
 * fallback comes first so that functools.partial binds it without a Python frame.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char PROCESS_KEY[] = "\"process\":";
#define PROCESS_KEY_LEN ((Py_ssize_t)(sizeof(PROCESS_KEY) - 1))

static const char *const HEAD_AUDITD_NAMES[] = {"result", "records"};
static const char *const HEAD_DATA_NAMES[] = {"syscall", "exit", "a0"};
/* The keys as interned str, made once: PyDict_GetItemString makes and hashes a str per call. */
static PyObject *HEAD_AUDITD[2], *HEAD_DATA[3];
static PyObject *KEY_PROCESS, *KEY_AUDITD, *KEY_RECORDS, *KEY_CONTAINER, *KEY_DATA, *KEY_TIMESTAMP;

static int init_keys(void) {
    for (int i = 0; i < 2; i++)
        if ((HEAD_AUDITD[i] = PyUnicode_InternFromString(HEAD_AUDITD_NAMES[i])) == NULL) return -1;
    for (int i = 0; i < 3; i++)
        if ((HEAD_DATA[i] = PyUnicode_InternFromString(HEAD_DATA_NAMES[i])) == NULL) return -1;
    KEY_PROCESS = PyUnicode_InternFromString("process");
    KEY_AUDITD = PyUnicode_InternFromString("auditd");
    KEY_RECORDS = HEAD_AUDITD[1];
    KEY_CONTAINER = PyUnicode_InternFromString("container");
    KEY_DATA = PyUnicode_InternFromString("data");
    KEY_TIMESTAMP = PyUnicode_InternFromString("@timestamp");
    return KEY_PROCESS && KEY_AUDITD && KEY_CONTAINER && KEY_DATA && KEY_TIMESTAMP ? 0 : -1;
}

/* A borrowed value or NULL (absent); NULL with an exception set on error. */
static PyObject *item(PyObject *dict, PyObject *key) { return PyDict_GetItemWithError(dict, key); }

/* Horspool's search for the key: glibc's memmem goes byte by byte through the ~2 KB of a
 * doc's text for a needle like this one, while the key's distinct bytes let this skip up to
 * its whole length at each step (Python's bytes.find skips too: the C version must not be
 * slower than the Python one it replaces). */
static unsigned char key_skip[256];

static void init_key_skip(void) {
    for (int c = 0; c < 256; c++) key_skip[c] = (unsigned char)PROCESS_KEY_LEN;
    for (Py_ssize_t i = 0; i < PROCESS_KEY_LEN - 1; i++)
        key_skip[(unsigned char)PROCESS_KEY[i]] = (unsigned char)(PROCESS_KEY_LEN - 1 - i);
}

static Py_ssize_t search_key(const char *text, Py_ssize_t size, Py_ssize_t from) {
    const Py_ssize_t last = PROCESS_KEY_LEN - 1;
    for (Py_ssize_t at = from; at + last < size;) {
        unsigned char tail = (unsigned char)text[at + last];
        if (tail == (unsigned char)PROCESS_KEY[last] && memcmp(text + at, PROCESS_KEY, (size_t)last) == 0)
            return at;
        at += key_skip[tail];
    }
    return -1;
}

/* Where the key occurs: the first offset (or -1) and whether there is a second. */
static Py_ssize_t find_key(const char *text, Py_ssize_t size, int *more) {
    Py_ssize_t at = search_key(text, size, 0);
    *more = at >= 0 && search_key(text, size, at + 1) >= 0;
    return at;
}

/* The end (one past the closing brace) of the JSON object starting at text[start]; -1 if
 * the text there is not a whole object. */
static Py_ssize_t object_end(const char *text, Py_ssize_t size, Py_ssize_t start) {
    if (start >= size || text[start] != '{') return -1;
    Py_ssize_t depth = 0;
    for (Py_ssize_t at = start; at < size; at++) {
        char c = text[at];
        if (c == '"') {
            for (at++; at < size && text[at] != '"'; at++) {
                if (text[at] == '\\') at++; /* the escaped character */
            }
            if (at >= size) return -1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0) return at + 1;
        }
    }
    return -1;
}

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

static PyObject *head_of(PyObject *doc, PyObject *process, PyObject *auditd) {
    PyObject *head_auditd = pick(auditd, HEAD_AUDITD, 2);
    if (head_auditd == NULL) return NULL;
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
    if (head == NULL || PyDict_SetItem(head, KEY_PROCESS, process) < 0 ||
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

static PyObject *split_at_process(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyCallable_Check(args[0]) || !PyDict_Check(args[1]) ||
        !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "split_at_process(fallback, doc: dict, text: bytes)");
        return NULL;
    }
    PyObject *fallback = args[0], *doc = args[1], *text = args[2];
    PyObject *process = item(doc, KEY_PROCESS);
    if (process == NULL || !PyDict_CheckExact(process) || item(doc, KEY_CONTAINER) != NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *auditd = item(doc, KEY_AUDITD);
    PyObject *records = auditd != NULL && PyDict_CheckExact(auditd) ? item(auditd, KEY_RECORDS) : NULL;
    if (records == NULL || !PyList_CheckExact(records) || PyList_GET_SIZE(records) == 0) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    const char *bytes = PyBytes_AS_STRING(text);
    Py_ssize_t size = PyBytes_GET_SIZE(text);
    int more = 0;
    Py_ssize_t at = find_key(bytes, size, &more);
    if (at < 0 || more) /* absent (the reference says None), or nested keys: the reference */
        return PyObject_Vectorcall(fallback, args + 1, 2, NULL);
    Py_ssize_t start = at + PROCESS_KEY_LEN, end = object_end(bytes, size, start);
    if (end < 0) return PyObject_Vectorcall(fallback, args + 1, 2, NULL);
    PyObject *head = head_of(doc, process, auditd);
    if (head == NULL) return NULL;
    return Py_BuildValue("(nnN)", start, end, head);
}

static PyMethodDef methods[] = {
    {"split_at_process", (PyCFunction)(void (*)(void))split_at_process, METH_FASTCALL,
     "split_at_process(fallback, doc, text) -> (start, end, head) | None: doc_text's, in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_doc_text",
                                    "auditstream.doc_text.split_at_process in C.", -1, methods};

PyMODINIT_FUNC PyInit_native_doc_text(void) {
    init_key_skip();
    if (init_keys() < 0) return NULL;
    return PyModule_Create(&module);
}
