/* receiver.native_datagrams: the records of a filled recvmmsg batch, in C.
 *
 * Reference: receiver/mmsg.py, DatagramBatch.python_take_records. A slot whose datagram is
 * a whole record from the kernel (size at least a netlink header, sender port id 0, no
 * MSG_TRUNC, nlmsg_type a record type other than AUDIT_REPLACE) becomes the tuple
 * (type, payload without trailing NULs, node) appended to `records`, from slot `start` on,
 * up to the first slot that is not: its index is returned (or `count`) for the Python path
 * to take (control replies, foreign senders, cut datagrams) before going on, so that the
 * records keep their order. At 50,000 events/s the live reader takes ~250,000 records a
 * second: the Python loop cost ~0.5 us a record (docs/performance.md, 21st pass).
 * `node` (optional, "" by default) is one str every record shares: live, this host's name
 * (auditstream/hostnode.py), at no cost per record.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first: its pyconfig.h sets _GNU_SOURCE (struct mmsghdr) */
#include <linux/netlink.h>
#include <string.h>
#include <sys/socket.h>

#define AUDIT_FIRST_USER_MSG 1100
#define AUDIT_REPLACE 1329
#define HEADER_BYTES 16 /* struct nlmsghdr */
#define CACHED_TYPES 2048 /* record types 1100..3147 get one shared int each */

static PyObject *cached_types[CACHED_TYPES];
static PyObject *empty_node;

/* The int of record type `type` (a new reference). */
static PyObject *type_object(unsigned type) {
    unsigned index = type - AUDIT_FIRST_USER_MSG;
    if (index >= CACHED_TYPES) return PyLong_FromUnsignedLong(type);
    if (cached_types[index] == NULL) {
        cached_types[index] = PyLong_FromUnsignedLong(type);
        if (cached_types[index] == NULL) return NULL;
    }
    Py_INCREF(cached_types[index]);
    return cached_types[index];
}

static int append_record(PyObject *records, unsigned type, const char *payload, Py_ssize_t size,
                         PyObject *node) {
    while (size > 0 && payload[size - 1] == '\0') size--;
    PyObject *type_int = type_object(type);
    if (type_int == NULL) return -1;
    PyObject *data = PyBytes_FromStringAndSize(payload, size);
    if (data == NULL) {
        Py_DECREF(type_int);
        return -1;
    }
    Py_INCREF(node);
    PyObject *record = PyTuple_New(3);
    if (record == NULL) {
        Py_DECREF(type_int);
        Py_DECREF(data);
        Py_DECREF(node);
        return -1;
    }
    PyTuple_SET_ITEM(record, 0, type_int);
    PyTuple_SET_ITEM(record, 1, data);
    PyTuple_SET_ITEM(record, 2, node);
    int rc = PyList_Append(records, record);
    Py_DECREF(record);
    return rc;
}

static PyObject *take_records(PyObject *module, PyObject *args) {
    Py_buffer buffer, headers, names;
    Py_ssize_t start, count, slot_bytes;
    PyObject *records, *node = empty_node;
    if (!PyArg_ParseTuple(args, "y*y*y*nnnO!|U", &buffer, &headers, &names, &start, &count,
                          &slot_bytes, &PyList_Type, &records, &node))
        return NULL;
    PyObject *result = NULL;
    if (start < 0 || count < start || slot_bytes < HEADER_BYTES || count > buffer.len / slot_bytes ||
        count > headers.len / (Py_ssize_t)sizeof(struct mmsghdr) ||
        count > names.len / (Py_ssize_t)sizeof(struct sockaddr_nl)) {
        PyErr_SetString(PyExc_ValueError, "take_records: slots beyond the batch's arrays");
        goto done;
    }
    const struct mmsghdr *hdr = headers.buf;
    const struct sockaddr_nl *sender = names.buf;
    const char *base = buffer.buf;
    Py_ssize_t slot = start;
    for (; slot < count; slot++) {
        Py_ssize_t size = (Py_ssize_t)hdr[slot].msg_len;
        const char *datagram = base + slot * slot_bytes;
        if (size < HEADER_BYTES || size > slot_bytes || sender[slot].nl_pid != 0 ||
            (hdr[slot].msg_hdr.msg_flags & MSG_TRUNC))
            break;
        uint16_t type;
        memcpy(&type, datagram + 4, sizeof type); /* nlmsg_type */
        if (type < AUDIT_FIRST_USER_MSG || type == AUDIT_REPLACE) break;
        if (append_record(records, type, datagram + HEADER_BYTES, size - HEADER_BYTES, node) < 0)
            goto done;
    }
    result = PyLong_FromSsize_t(slot);
done:
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&headers);
    PyBuffer_Release(&names);
    return result;
}

/* (sizeof struct mmsghdr, sizeof struct sockaddr_nl): mmsg.py uses C only where its ctypes
 * structures have these sizes. */
static PyObject *struct_sizes(PyObject *module, PyObject *unused) {
    return Py_BuildValue("nn", (Py_ssize_t)sizeof(struct mmsghdr),
                         (Py_ssize_t)sizeof(struct sockaddr_nl));
}

static PyMethodDef methods[] = {
    {"take_records", take_records, METH_VARARGS,
     "take_records(buffer, headers, names, start, count, slot_bytes, records, node='') -> "
     "first slot not taken"},
    {"struct_sizes", struct_sizes, METH_NOARGS, "(sizeof mmsghdr, sizeof sockaddr_nl)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "native_datagrams", NULL, -1,
                                        methods};

PyMODINIT_FUNC PyInit_native_datagrams(void) {
    empty_node = PyUnicode_FromStringAndSize("", 0);
    if (empty_node == NULL) return NULL;
    return PyModule_Create(&module_def);
}
