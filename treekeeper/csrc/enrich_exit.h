/* treekeeper.native_enrich: the common case of ProcessTable._act for an exit, in C.
 *
 * Included by enrich.c. Reference: treekeeper/tree.py (_act, _exit, _reparent_children).
 * The code here takes exit_group, and exit of a process known to be single-threaded, when
 * the process has no live child to hand to a reaper; a process that already exited, or an
 * exit of a maybe-threaded one, changes nothing. Every other case (live children, an a0
 * that Python's int(x, 16) reads more leniently) is declined before anything changes.
 */

enum { EXIT_NOTHING, EXIT_ENDS };

typedef struct {
    int kind;
    PyObject *proc; /* borrowed */
    PyObject *code; /* new reference: the exit code, or None */
    PyObject *exited; /* borrowed: the table's _exited heap */
    int64_t at_ms;
} ExitPlan;

static void exit_plan_release(ExitPlan *plan) { Py_CLEAR(plan->code); }

/* Does ``dead`` have a child _reparent_children would move: 1 yes, 0 no, -1 decline. */
static int has_live_child(Table *t, PyObject *dead)
{
    PyObject *children = pslot(dead, P_CHILDREN);
    int64_t key[2];
    if (children == NULL || !PySet_CheckExact(children) || key_of(dead, key) < 0)
        return -1;
    if (PySet_GET_SIZE(children) == 0)
        return 0;
    PyObject *dead_key = pair_of(key[0], key[1]);
    if (dead_key == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *child_key;
    Py_hash_t hash;
    int found = 0;
    while (found == 0 && _PySet_NextEntry(children, &pos, &child_key, &hash)) {
        PyObject *child;
        if (table_get(t, child_key, &child) < 0) {
            found = -1;
            break;
        }
        if (child == NULL)
            continue; /* deleted already */
        PyObject *exited = pslot(child, P_EXITED_AT), *parent = pslot(child, P_PARENT);
        if (exited == NULL || parent == NULL || (parent != Py_None && !PyTuple_CheckExact(parent))) {
            found = -1;
            break;
        }
        if (exited != Py_None || parent == Py_None)
            continue;
        int same = PyObject_RichCompareBool(parent, dead_key, Py_EQ);
        found = same < 0 ? -1 : same;
    }
    Py_DECREF(dead_key);
    PyErr_Clear();
    return found;
}

/* Decide _act for exit or exit_group (``group``) by ``proc``: 1 with *plan when the code
 * here does it, 0 to leave it to Python (nothing changed). */
static int plan_exit(Table *t, PyObject *doc, int group, PyObject *proc, int64_t at_ms,
                     ExitPlan *plan)
{
    memset(plan, 0, sizeof *plan);
    plan->proc = proc;
    plan->at_ms = at_ms;
    PyObject *threaded = pslot(proc, P_MAYBE_THREADED), *exited = pslot(proc, P_EXITED_AT);
    if (threaded == NULL || !PyBool_Check(threaded) || exited == NULL)
        return 0;
    if (!group && threaded == Py_True) {
        plan->kind = EXIT_NOTHING; /* glibc's pthread_exit calls exit too: not the process */
        return 1;
    }
    PyObject *auditd, *data, *a0;
    if (section_of(doc, s_auditd, &auditd) < 0 || section_of(auditd, s_data, &data) < 0)
        return 0;
    int has_a0 = optional_str(data, s_a0, &a0);
    int64_t code;
    if (has_a0 < 0 || (has_a0 && !plain_hex(a0, &code)))
        return 0;
    if (exited != Py_None) {
        plan->kind = EXIT_NOTHING; /* ended already */
        return 1;
    }
    PyObject *heap = PyDict_GetItemWithError(t->dict, s_exited);
    if (heap == NULL || !PyList_CheckExact(heap) || has_live_child(t, proc) != 0) {
        PyErr_Clear();
        return 0;
    }
    plan->exited = heap;
    plan->code = has_a0 ? PyLong_FromLongLong(code & 0xFF) : Py_NewRef(Py_None);
    if (plan->code == NULL) {
        PyErr_Clear();
        return 0;
    }
    plan->kind = EXIT_ENDS;
    return 1;
}

/* Carry out a plan: the lifecycle docs (a new list), NULL with an exception. */
static PyObject *do_exit(Table *t, PyObject *table, ExitPlan *plan)
{
    PyObject *out = PyList_New(0);
    if (out == NULL || plan->kind == EXIT_NOTHING)
        return out;
    PyObject *proc = plan->proc, *entry = NULL, *key = NULL;
    int64_t own[2];
    key_of(proc, own);
    PyObject *at = PyLong_FromLongLong(plan->at_ms);
    if (at == NULL)
        goto error;
    pslot_set(proc, P_EXITED_AT, Py_NewRef(at));
    pslot_set(proc, P_EXIT_CODE, Py_NewRef(plan->code));
    key = pair_of(own[0], own[1]);
    entry = key != NULL ? PyTuple_Pack(2, at, key) : NULL;
    if (entry == NULL)
        goto error;
    PyObject *push_args[2] = {plan->exited, entry};
    PyObject *pushed = PyObject_Vectorcall(heappush, push_args, 2, NULL);
    if (pushed == NULL)
        goto error;
    Py_DECREF(pushed);
    if (append_lifecycle_doc(t, table, s_process_exited, proc, at, plan->at_ms, out) < 0)
        goto error;
    Py_DECREF(entry);
    Py_DECREF(key);
    Py_DECREF(at);
    return out;
error:
    Py_XDECREF(entry);
    Py_XDECREF(key);
    Py_XDECREF(at);
    Py_XDECREF(out);
    return NULL;
}
