/*
 * Part of assembler/csrc/ecs_write.h (included once, after its JSON primitives): writing the
 * parts of a fused event (assembler/csrc/fused_event.h) that a Coalesced holds as dicts,
 * data, paths, file and the user ids, straight from the fields native_coalesce read.
 *
 * Reference: what put_value writes of the Coalesced's dicts (data, paths, file) and what
 * kernel_user_applies / general_user_ids read of its user_ids; the bytes are the same.
 */
#ifndef AUDITSTREAM_ECS_FUSED_H
#define AUDITSTREAM_ECS_FUSED_H

#include "fused_event.h"

static const FusedApi *fused_api; /* NULL: not loaded (or not the version this was built for) */
static int fused_enabled = 1;     /* _set_fused(False) turns it off (tests, benchmarks) */
static PyObject *fused_empty_list, *fused_empty_dict;
static unsigned long long fused_written, fused_unwritten; /* read by native_coalesce, then written or not */

static inline int put_text(Out *o, const FusedText *t)
{
    return t->str != NULL ? put_str(o, t->str)
                          : put_utf8_string(o, (const unsigned char *)t->text, t->len);
}

/* {"key":value,...} of fields, in their order, as put_value writes a dict of str. */
static int put_fields(Out *o, const FusedField *fields, int n)
{
    if (PUT_LIT(o, "{") < 0)
        return -1;
    for (int i = 0; i < n; i++)
        if ((i && PUT_LIT(o, ",") < 0) ||
            put_utf8_string(o, (const unsigned char *)fields[i].key, fields[i].key_len) < 0 ||
            PUT_LIT(o, ":") < 0 || put_text(o, &fields[i].value) < 0)
            return -1;
    return PUT_LIT(o, "}");
}

static int put_paths(Out *o, const FusedEvent *ev)
{
    if (PUT_LIT(o, "[") < 0)
        return -1;
    for (int i = 0; i < ev->n_paths; i++)
        if ((i && PUT_LIT(o, ",") < 0) ||
            put_fields(o, ev->path_fields + ev->path_start[i],
                       ev->path_start[i + 1] - ev->path_start[i]) < 0)
            return -1;
    return PUT_LIT(o, "]");
}

static int put_file(Out *o, const FusedEvent *ev)
{
    static const char *const names[FF_COUNT] = {"path", "device", "inode", "mode", "uid", "gid"};
    int first = 1;
    if (PUT_LIT(o, "{") < 0)
        return -1;
    for (int k = 0; k < FF_COUNT; k++) {
        const FusedText *t = &ev->file[k];
        if ((t->str != NULL || t->len > 0) && (put_key(o, &first, names[k]) < 0 || put_text(o, t) < 0))
            return -1;
    }
    return PUT_LIT(o, "}");
}

/* write_head_data's syscall, exit and a0, from the fields. */
static int write_fused_head_data(Out *o, const FusedEvent *ev)
{
    static const char *const names[] = {"syscall", "exit", "a0"};
    int first = 1;
    if (PUT_LIT(o, "{") < 0)
        return -1;
    for (int k = 0; k < 3; k++) {
        int i = fused_find(ev->data, ev->n_data, names[k], (Py_ssize_t)strlen(names[k]));
        if (i >= 0 && (put_key(o, &first, names[k]) < 0 || put_text(o, &ev->data[i].value) < 0))
            return -1;
    }
    return PUT_LIT(o, "}");
}

/* The user ids as kernel_user_applies and general_user_ids read them: their count, each
 * one's ID_* index and value (new str), and whether they are the kernel layout; -1 to
 * decline (ENRICHED names, an id this writer does not know), with an exception on error. */
static int fused_user_ids(PyObject *records, const FusedEvent *ev, int *index, PyObject **values,
                          int *kernel)
{
    PyObject *enriched = primary_enriched(records);
    if (enriched == NULL || !PyBytes_CheckExact(enriched) || PyBytes_GET_SIZE(enriched) != 0 ||
        ev->n_ids > ID_COUNT)
        return -1;
    *kernel = ev->n_ids == ID_COUNT;
    for (int i = 0; i < ev->n_ids; i++) {
        const FusedField *f = &ev->ids[i];
        index[i] = -1;
        for (int k = 0; k < ID_COUNT && index[i] < 0; k++)
            if ((Py_ssize_t)strlen(id_names[k]) == f->key_len &&
                memcmp(id_names[k], f->key, (size_t)f->key_len) == 0)
                index[i] = k;
        if (index[i] < 0)
            return -1; /* general_user nests an unknown one under its own name */
        *kernel &= index[i] == kernel_layout[i] && !fused_text_is(&f->value, "unset");
        values[i] = fused_api->str_of(&f->value);
        if (values[i] == NULL)
            return -1;
    }
    return ev->n_ids;
}

#endif
