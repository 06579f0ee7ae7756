/* What the C modules share to read the Python classes they mirror: a module's attribute or
 * class by name, and where a class keeps its __slots__ (so a field is read by offset);
 * set_steal, for the dicts they build; and the `+=` of the Python counters they keep.
 *
 * Define PYCLASS_MODULE (the extension's name, for error messages) before including it.
 * The functions are static inline: a module that uses only some of them gets no warning.
 */
#ifndef AUDITSTREAM_PYCLASS_H
#define AUDITSTREAM_PYCLASS_H

#include <Python.h>
#include <structmember.h>

#ifndef PYCLASS_MODULE
#error "define PYCLASS_MODULE before including pyclass.h"
#endif

/* Python 3.12 renamed the member kinds; 3.11 has only the old names. */
#ifdef Py_T_OBJECT_EX
#define MEMBER_OBJECT_EX Py_T_OBJECT_EX
#else
#define MEMBER_OBJECT_EX T_OBJECT_EX
#endif

static inline PyObject *import_attr(const char *module_name, const char *name)
{
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL)
        return NULL;
    PyObject *attr = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return attr;
}

static inline PyTypeObject *import_type(const char *module_name, const char *name)
{
    PyObject *type = import_attr(module_name, name);
    if (type != NULL && !PyType_Check(type)) {
        PyErr_Format(PyExc_ImportError, PYCLASS_MODULE ": %s.%s is not a class", module_name,
                     name);
        Py_CLEAR(type);
    }
    return (PyTypeObject *)type;
}

/* The offset of ``type``'s own slot ``name`` (a member descriptor of kind object-ex). */
static inline int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL)
        return -1;
    int ok = Py_TYPE(descr) == &PyMemberDescr_Type &&
             ((PyMemberDescrObject *)descr)->d_common.d_type == type &&
             ((PyMemberDescrObject *)descr)->d_member->type == MEMBER_OBJECT_EX;
    if (ok)
        *offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_ImportError, PYCLASS_MODULE ": %s.%s is not a slot", type->tp_name,
                     name);
        return -1;
    }
    return 0;
}

static inline int slot_offsets(PyTypeObject *type, const char *const *names,
                               Py_ssize_t *offsets, int count)
{
    for (int i = 0; i < count; i++)
        if (slot_offset(type, names[i], &offsets[i]) < 0)
            return -1;
    return 0;
}

/* A slot's value (borrowed), NULL when unset. The caller checked the exact type. */
static inline PyObject *slot(PyObject *obj, Py_ssize_t offset)
{
    return *(PyObject **)((char *)obj + offset);
}

/* Set target[key] = value and drop the reference to value (NULL value: error passes). */
static inline int set_steal(PyObject *target, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = PyDict_SetItem(target, key, value);
    Py_DECREF(value);
    return rc;
}

/* now + n as Python adds them (any int); NULL with an exception. */
static inline PyObject *plus(PyObject *now, Py_ssize_t n)
{
    PyObject *add = PyLong_FromSsize_t(n);
    PyObject *sum = add ? PyNumber_Add(now, add) : NULL;
    Py_XDECREF(add);
    return sum;
}

/* obj.name += n; 0, or -1 with an exception. */
static inline int add_to_attr(PyObject *obj, PyObject *name, Py_ssize_t n)
{
    PyObject *now = PyObject_GetAttr(obj, name);
    PyObject *sum = now ? plus(now, n) : NULL;
    int rc = sum ? PyObject_SetAttr(obj, name, sum) : -1;
    Py_XDECREF(now);
    Py_XDECREF(sum);
    return rc;
}

/* mapping[key] += n; 0, or -1 with an exception. */
static inline int add_to_item(PyObject *mapping, PyObject *key, Py_ssize_t n)
{
    PyObject *now = PyObject_GetItem(mapping, key);
    PyObject *sum = now ? plus(now, n) : NULL;
    int rc = sum ? PyObject_SetItem(mapping, key, sum) : -1;
    Py_XDECREF(now);
    Py_XDECREF(sum);
    return rc;
}

#endif
