/* treekeeper.native_enrich: the common case of ProcessTable._act for an exec, in C.
 *
 * Included by enrich.c. Reference: treekeeper/tree.py (_act, _exec, _take_image with its
 * args) and treekeeper/containers.py (classify, called here through the module, as tree.py
 * does, except for images neither a shim's nor a runtime's: plain_image below). The code
 * here takes an execve or execveat whose new image needs no container rule: the process is
 * in no container and its new image is no runtime's init, or it is in one already. An exec
 * older than the process's last one, or one that failed, changes nothing. Every other case
 * (a shim's or runtime's child that joins a container, doc values of other types than
 * Python's _str/_args expect) is declined before anything changes.
 */

/* ---- containers.classify's answer for most images, without calling it -------------- */

/* containers._basename(path): what follows the last '/' once trailing ones are cut ("" for
 * None or ""); a new reference. */
static PyObject *image_basename(PyObject *path)
{
    if (path == Py_None)
        return Py_NewRef(s_empty);
    int kind = PyUnicode_KIND(path);
    const void *data = PyUnicode_DATA(path);
    Py_ssize_t end = PyUnicode_GET_LENGTH(path);
    while (end > 0 && PyUnicode_READ(kind, data, end - 1) == '/')
        end--;
    Py_ssize_t start = end;
    while (start > 0 && PyUnicode_READ(kind, data, start - 1) != '/')
        start--;
    return PyUnicode_Substring(path, start, end);
}

/* 1: neither the image's name nor its executable's is a shim's (containerd-shim*) or in
 * containers._RUNTIME_BINARIES, so classify(executable, args) is (RuntimeRole.NONE, None)
 * (its last line) and needs no call: ~0.5 µs of Python per exec; 0: classify must say
 * (a runtime, a shim, or values it reads otherwise than plainly); -1 with an exception. */
static int plain_image(PyObject *executable, PyObject *args)
{
    PyObject *first = Py_None; /* args[0] if args else "" */
    if (args != Py_None) {
        if (!PyList_CheckExact(args))
            return 0;
        if (PyList_GET_SIZE(args) > 0 && !PyUnicode_CheckExact(first = PyList_GET_ITEM(args, 0)))
            return 0;
    }
    if (executable != Py_None && !PyUnicode_CheckExact(executable))
        return 0;
    PyObject *binaries = PyObject_GetAttr(containers_module, s_runtime_binaries);
    if (binaries == NULL)
        return -1;
    int plain = PyFrozenSet_CheckExact(binaries);
    PyObject *const paths[2] = {first, executable};
    for (int i = 0; i < 2 && plain > 0; i++) {
        PyObject *name = image_basename(paths[i]);
        if (name == NULL) {
            plain = -1;
            break;
        }
        Py_ssize_t shim = PyUnicode_Tailmatch(name, s_shim_prefix, 0, PY_SSIZE_T_MAX, -1);
        int known = shim ? 0 : PySet_Contains(binaries, name);
        Py_DECREF(name);
        plain = shim < 0 || known < 0 ? -1 : !shim && !known;
    }
    Py_DECREF(binaries);
    return plain;
}

enum { EXEC_NOTHING, EXEC_IMAGE };

typedef struct {
    int kind;
    PyObject *proc; /* borrowed */
    /* new references: the image and what classify() said of it */
    PyObject *executable, *name, *args, *title, *cwd, *role, *managed;
    int64_t at_ms;
} ExecPlan;

static void exec_plan_release(ExecPlan *plan)
{
    Py_CLEAR(plan->executable);
    Py_CLEAR(plan->name);
    Py_CLEAR(plan->args);
    Py_CLEAR(plan->title);
    Py_CLEAR(plan->cwd);
    Py_CLEAR(plan->role);
    Py_CLEAR(plan->managed);
}

/* tree._args(value): an exact list of exact strs (1, *out borrowed), None/absent (0), -1
 * decline (anything _args would read differently from the test here). */
static int plain_args(PyObject *process, PyObject **out)
{
    *out = PyDict_GetItemWithError(process, s_args);
    if (*out == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (*out == Py_None)
        return 0;
    if (!PyList_CheckExact(*out))
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(*out); i++)
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(*out, i)))
            return -1;
    return 1;
}

/* Decide _act for an exec by ``proc``: 1 with *plan when the code here does it, 0 to leave
 * it to Python (nothing changed). */
static int plan_exec(Table *t, PyObject *doc, PyObject *proc, int64_t at_ms, ExecPlan *plan)
{
    memset(plan, 0, sizeof *plan);
    plan->proc = proc;
    plan->at_ms = at_ms;
    PyObject *process, *auditd, *result;
    if (section_of(doc, s_process, &process) < 0 || section_of(doc, s_auditd, &auditd) < 0 ||
        process == NULL)
        return 0;
    int has_result = optional_str(auditd, s_result, &result);
    if (has_result < 0)
        return 0;
    if (!has_result || PyUnicode_Compare(result, s_success) != 0) {
        plan->kind = EXEC_NOTHING; /* a failed exec keeps the old image */
        return 1;
    }
    PyObject *exec_ms = pslot(proc, P_EXEC_MS), *container = pslot(proc, P_CONTAINER);
    PyObject *old_role = pslot(proc, P_ROLE);
    int has_exec;
    int64_t last_exec;
    if (exec_ms == NULL || opt_i64(exec_ms, &has_exec, &last_exec) < 0 || container == NULL ||
        old_role == NULL || pslot(proc, P_NAME) == NULL || pslot(proc, P_CWD) == NULL)
        return 0;
    if (has_exec && at_ms < last_exec) {
        plan->kind = EXEC_NOTHING; /* an older exec arriving late: the newer image stays */
        return 1;
    }
    PyObject *executable, *name, *title, *cwd, *args;
    if (optional_str(process, s_executable, &executable) < 0 ||
        optional_str(process, s_name, &name) < 0 || optional_str(process, s_title, &title) < 0 ||
        optional_str(process, s_working_directory, &cwd) < 0 || plain_args(process, &args) < 0)
        return 0;
    PyObject *none = Py_None;
    plan->executable = Py_NewRef(executable != NULL ? executable : none);
    plan->args = Py_NewRef(args != NULL ? args : none);
    plan->title = Py_NewRef(title != NULL ? title : none);
    /* name: _str(name) or proc.name; cwd: kept unless the event has one */
    plan->name = Py_NewRef(name != NULL && name != none && PyUnicode_GET_LENGTH(name) > 0
                               ? name
                               : pslot(proc, P_NAME));
    plan->cwd = Py_NewRef(cwd != NULL && cwd != none ? cwd : pslot(proc, P_CWD));
    PyObject *classify = PyObject_GetAttr(containers_module, s_classify);
    if (classify == NULL)
        goto decline;
    int plain = classify == classify_imported ? plain_image(plan->executable, plan->args) : 0;
    if (plain != 0) {
        Py_DECREF(classify);
        if (plain < 0)
            goto decline;
        plan->role = Py_NewRef(role_none);
        plan->managed = Py_NewRef(Py_None);
    } else {
        PyObject *classify_args[2] = {plan->executable, plan->args};
        PyObject *said = PyObject_Vectorcall(classify, classify_args, 2, NULL);
        Py_DECREF(classify);
        if (said == NULL || !PyTuple_CheckExact(said) || PyTuple_GET_SIZE(said) != 2) {
            Py_XDECREF(said);
            goto decline;
        }
        plan->role = Py_NewRef(PyTuple_GET_ITEM(said, 0));
        plan->managed = Py_NewRef(PyTuple_GET_ITEM(said, 1));
        Py_DECREF(said);
    }
    if (container == Py_None) {
        /* Python's container rules: a runtime's init, or a shim's (or runtime's) child */
        if (plan->role == role_runtime_init)
            goto decline;
        if (plan->role == role_none) {
            PyObject *parent;
            if (table_get(t, pslot(proc, P_PARENT), &parent) < 0)
                goto decline;
            if (parent != NULL) {
                PyObject *managed = pslot(parent, P_MANAGED), *role = pslot(parent, P_ROLE);
                if (managed == NULL || role == NULL)
                    goto decline;
                if (managed != Py_None && (role == role_shim || role == role_runtime))
                    goto decline; /* it may join its container: Python */
            }
        }
    }
    plan->kind = EXEC_IMAGE;
    return 1;
decline:
    PyErr_Clear();
    exec_plan_release(plan);
    return 0;
}

/* Carry out a plan: the lifecycle docs (a new list), NULL with an exception. */
static PyObject *do_exec(Table *t, PyObject *table, ExecPlan *plan)
{
    PyObject *out = PyList_New(0);
    if (out == NULL || plan->kind == EXEC_NOTHING)
        return out;
    PyObject *proc = plan->proc;
    PyObject *at = PyLong_FromLongLong(plan->at_ms);
    if (at == NULL)
        goto error;
    pslot_set(proc, P_EXEC_MS, Py_NewRef(at));
    /* _take_image(with_args=True), then maybe_threaded, then classify's verdict */
    pslot_set(proc, P_ARGS, Py_NewRef(plan->args));
    pslot_set(proc, P_TITLE, Py_NewRef(plan->title));
    pslot_set(proc, P_EXECUTABLE, Py_NewRef(plan->executable));
    pslot_set(proc, P_NAME, Py_NewRef(plan->name));
    pslot_set(proc, P_CWD, Py_NewRef(plan->cwd));
    pslot_set(proc, P_IMAGE_MS, Py_NewRef(at));
    pslot_set(proc, P_ANCESTRY_ENTRY, Py_NewRef(Py_None));
    pslot_set(proc, P_MAYBE_THREADED, Py_NewRef(Py_False));
    pslot_set(proc, P_ROLE, Py_NewRef(plan->role));
    pslot_set(proc, P_MANAGED, Py_NewRef(plan->managed));
    if (append_lifecycle_doc(t, table, s_process_exec, proc, at, plan->at_ms, out) < 0)
        goto error;
    Py_DECREF(at);
    return out;
error:
    Py_XDECREF(at);
    Py_XDECREF(out);
    return NULL;
}
