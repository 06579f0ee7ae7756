/*
 * Part of treekeeper/csrc/enrich.c (included after apply_enrich): the last enrichment of one
 * apply_ready call, reused by the events after it that would be enriched the same.
 *
 * Why: a busy process sends a run of events whose `process` is the same text (an open()
 * loop: the same pid, title, cwd). Each got its own copy enriched (entity_id, parent,
 * ancestry) and encoded again by the jsonl sink: with the memo, 4.83 -> 4.00 us per event
 * of a live-like tree keeper's own steps (docs/performance.md, "Thirty-seventh pass").
 *
 * apply_enrich's result depends on two things only: the doc's `process` as it stands before
 * (the pristine dict), and the values it writes, read from the table's Process objects
 * (entity_id, started_at, executable, name, args of the process and of its parent, the
 * ppid it may write, the ancestors' kept elements). The memo keeps both from the last event
 * it enriched, by strong reference: the pristine dict's items (and those of its `parent`
 * dict, the one value apply_enrich changes in place), and the written values. An event whose
 * pristine dict has the same JSON (the same keys in the same order, values of the same
 * exact types and equal; anything else only when it is the same object) and whose values
 * to write are the very same objects gets the memo's enriched dict as its `process`, the
 * same object: equal, key for key, to what apply_enrich would make of its own. Its
 * container step (the doc's, not the process's) runs as always.
 *
 * Not memoized (enriched as before, the memo emptied): an ancestor whose element Python
 * must make (its exception must come after the doc changes made before it, as in
 * enrich_doc), a process or parent dict of more than MEMO_ITEMS_MAX items.
 *
 * Docs that share a `process` are read-only from here on, as the ancestry elements they
 * already shared (treekeeper/enrich.py); the jsonl sink encodes a shared one once per run
 * (auditstream/csrc/doc_text.c, encode_lines).
 */
#ifndef AUDITSTREAM_ENRICH_MEMO_H
#define AUDITSTREAM_ENRICH_MEMO_H

#define MEMO_ITEMS_MAX 32
/* entity_id, started_at, executable, name, args; the parent's pid, entity_id, executable,
 * name, args; the ppid written without a parent; then one per ancestor */
#define MEMO_FIXED_INPUTS 11
#define MEMO_INPUTS_MAX (MEMO_FIXED_INPUTS + LINEAGE_MAX)
#define SAME_JSON_DEPTH_MAX 64

typedef struct {
    Py_ssize_t count;
    PyObject *keys[MEMO_ITEMS_MAX], *values[MEMO_ITEMS_MAX]; /* strong */
} MemoItems;

typedef struct {
    PyObject *enriched; /* the process dict made last (strong); NULL: the memo is empty */
    MemoItems process;  /* the pristine process dict's items */
    Py_ssize_t section_at; /* index of its "parent" dict among them, or -1 */
    MemoItems section;     /* that dict's items as they were */
    int inputs;
    PyObject *input[MEMO_INPUTS_MAX]; /* the values written (strong; NULL: none) */
} EnrichMemo;

static void memo_items_clear(MemoItems *items)
{
    for (Py_ssize_t i = 0; i < items->count; i++) {
        Py_CLEAR(items->keys[i]);
        Py_CLEAR(items->values[i]);
    }
    items->count = 0;
}

static void memo_clear(EnrichMemo *memo)
{
    Py_CLEAR(memo->enriched);
    memo_items_clear(&memo->process);
    memo_items_clear(&memo->section);
    memo->section_at = -1;
    for (int i = 0; i < memo->inputs; i++)
        Py_CLEAR(memo->input[i]);
    memo->inputs = 0;
}

/* Whether a and b are the same JSON: identical objects, or exact str, int, float, list or
 * dict of equal contents (dict keys in the same order). No Python code runs. */
static int same_json(PyObject *a, PyObject *b, int depth)
{
    if (a == b)
        return 1;
    if (Py_TYPE(a) != Py_TYPE(b) || depth > SAME_JSON_DEPTH_MAX)
        return 0;
    if (PyUnicode_CheckExact(a))
        return PyUnicode_GET_LENGTH(a) == PyUnicode_GET_LENGTH(b) && PyUnicode_Compare(a, b) == 0;
    if (PyLong_CheckExact(a)) /* int's own comparison: it cannot fail or run Python code */
        return PyObject_RichCompareBool(a, b, Py_EQ) == 1;
    if (PyFloat_CheckExact(a)) { /* bit for bit: -0.0 and 0.0 are written differently */
        double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
        return memcmp(&x, &y, sizeof x) == 0;
    }
    if (PyList_CheckExact(a)) {
        Py_ssize_t n = PyList_GET_SIZE(a);
        if (PyList_GET_SIZE(b) != n)
            return 0;
        for (Py_ssize_t i = 0; i < n; i++)
            if (!same_json(PyList_GET_ITEM(a, i), PyList_GET_ITEM(b, i), depth + 1))
                return 0;
        return 1;
    }
    if (PyDict_CheckExact(a)) {
        if (PyDict_GET_SIZE(a) != PyDict_GET_SIZE(b))
            return 0;
        Py_ssize_t at_a = 0, at_b = 0;
        PyObject *key_a, *value_a, *key_b, *value_b;
        while (PyDict_Next(a, &at_a, &key_a, &value_a)) {
            if (!PyDict_Next(b, &at_b, &key_b, &value_b) || !same_json(key_a, key_b, depth + 1) ||
                !same_json(value_a, value_b, depth + 1))
                return 0;
        }
        return 1;
    }
    return 0; /* None, True and False are singletons; any other type: only itself */
}

/* dict's items into items (strong): 1, or 0 when it has more than MEMO_ITEMS_MAX. */
static int memo_items_take(MemoItems *items, PyObject *dict)
{
    if (PyDict_GET_SIZE(dict) > MEMO_ITEMS_MAX)
        return 0;
    Py_ssize_t at = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &at, &key, &value)) {
        items->keys[items->count] = Py_NewRef(key);
        items->values[items->count] = Py_NewRef(value);
        items->count++;
    }
    return 1;
}

/* Whether dict's items are those kept (section_at: the index whose value is compared with
 * section's items instead, -1 none). */
static int memo_items_match(const MemoItems *items, PyObject *dict, Py_ssize_t section_at,
                            const MemoItems *section)
{
    if (!PyDict_CheckExact(dict) || PyDict_GET_SIZE(dict) != items->count)
        return 0;
    Py_ssize_t at = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &at, &key, &value)) {
        if (!same_json(key, items->keys[i], 0))
            return 0;
        if (i == section_at) {
            if (!memo_items_match(section, value, -1, NULL))
                return 0;
        } else if (!same_json(value, items->values[i], 0)) {
            return 0;
        }
        i++;
    }
    return 1;
}

/* The values apply_enrich will write for plan, in input (borrowed): their count, or -1
 * when an ancestor's element needs Python (not memoized). */
static int memo_inputs_of(const Plan *plan, PyObject **input)
{
    PyObject *proc = plan->proc, *parent = plan->parent;
    input[0] = pslot(proc, P_ENTITY_ID);
    input[1] = pslot(proc, P_STARTED_AT); /* plan->start is its text */
    input[2] = pslot(proc, P_EXECUTABLE);
    input[3] = pslot(proc, P_NAME);
    input[4] = pslot(proc, P_ARGS);
    input[5] = parent ? pslot(parent, P_PID) : NULL;
    input[6] = parent ? pslot(parent, P_ENTITY_ID) : NULL;
    input[7] = parent ? pslot(parent, P_EXECUTABLE) : NULL;
    input[8] = parent ? pslot(parent, P_NAME) : NULL;
    input[9] = parent ? pslot(parent, P_ARGS) : NULL;
    input[10] = parent == NULL && plan->write_ppid ? pslot(proc, P_PPID) : NULL;
    for (int i = 0; i < plan->ancestors; i++)
        if ((input[MEMO_FIXED_INPUTS + i] = cached_entry(plan, plan->ancestry[i])) == NULL)
            return -1;
    return MEMO_FIXED_INPUTS + plan->ancestors;
}

/* 1: the memo's enrichment is this plan's (the same pristine process, the same values). */
static int memo_matches(const EnrichMemo *memo, const Plan *plan, PyObject *const *input, int inputs)
{
    if (memo->enriched == NULL || memo->inputs != inputs)
        return 0;
    for (int i = 0; i < inputs; i++)
        if (memo->input[i] != input[i])
            return 0;
    return memo_items_match(&memo->process, plan->process, memo->section_at, &memo->section);
}

/* Keep the plan's pristine process and input before apply_enrich changes it: 1, or 0 when
 * it cannot be memoized (the memo is then empty). */
static int memo_keep(EnrichMemo *memo, const Plan *plan, PyObject *const *input, int inputs)
{
    memo_clear(memo);
    if (!memo_items_take(&memo->process, plan->process))
        return 0;
    if (plan->section != NULL) { /* found once among the values: apply_enrich changes it */
        int found = 0;
        for (Py_ssize_t i = 0; i < memo->process.count; i++)
            if (memo->process.values[i] == plan->section) {
                memo->section_at = i;
                found++;
            }
        if (found != 1 || !memo_items_take(&memo->section, plan->section)) {
            memo_clear(memo);
            return 0;
        }
    }
    for (int i = 0; i < inputs; i++)
        memo->input[i] = Py_XNewRef(input[i]);
    memo->inputs = inputs;
    return 1;
}

/* apply_enrich through the memo: the memo's process when it matches (then only the
 * container step), else apply_enrich, kept in the memo when it can be. 0, or -1. */
static int apply_enrich_memo(PyObject *doc, Plan *plan, EnrichMemo *memo)
{
    PyObject *input[MEMO_INPUTS_MAX];
    int inputs = memo_inputs_of(plan, input);
    if (inputs >= 0 && memo_matches(memo, plan, input, inputs)) {
        if (PyDict_SetItem(doc, s_process, memo->enriched) < 0)
            return -1;
        return apply_container(doc, plan);
    }
    int kept = 0;
    if (inputs >= 0)
        kept = memo_keep(memo, plan, input, inputs);
    else
        memo_clear(memo);
    if (apply_enrich(doc, plan) < 0) {
        memo_clear(memo);
        return -1;
    }
    if (kept)
        memo->enriched = Py_NewRef(plan->process);
    return 0;
}

#endif
