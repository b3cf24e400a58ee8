/* The KV router's prefix index, native: see index.py for what it stands for.
 *
 * One open-addressing table (linear probing, backward-shift deletion) maps a block's
 * sequence hash to the sorted numbers of the slots holding it; a block held by one
 * slot, the common case, keeps that number inline. Slots are Python objects
 * ((instance id, DP rank) tuples) numbered on first sight; a cleared slot's number
 * is reused. Applying an event is a probe and a small insert or removal per block,
 * with no Python object per block.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t key;
    uint32_t n;   /* holders; 0 marks an empty bucket */
    uint32_t cap; /* 0: the one holder is inline */
    union {
        uint32_t one;
        uint32_t *many;
    } h;
} Entry;

typedef struct {
    PyObject_HEAD
    Entry *table;
    size_t mask; /* buckets - 1, buckets a power of two */
    int shift;   /* 64 - log2(buckets) */
    Py_ssize_t used;
    PyObject *numbers;    /* dict: slot -> its number */
    PyObject **slots;     /* number -> slot (NULL when free) */
    Py_ssize_t *counts;   /* number -> blocks held */
    uint32_t *free_numbers;
    Py_ssize_t nslots, free_len, slots_cap;
    uint32_t *scratch;    /* two buffers of slots_cap for overlaps() */
} Index;

static inline const uint32_t *holders(const Entry *e) { return e->cap ? e->h.many : &e->h.one; }

static inline size_t bucket(const Index *ix, uint64_t key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> ix->shift);
}

/* The bucket holding `key`, or the empty one where it would go. */
static Entry *probe(const Index *ix, uint64_t key) {
    for (size_t i = bucket(ix, key);; i = (i + 1) & ix->mask) {
        Entry *e = &ix->table[i];
        if (!e->n || e->key == key) return e;
    }
}

static Entry *find(const Index *ix, uint64_t key) {
    Entry *e = probe(ix, key);
    return e->n ? e : NULL;
}

static int alloc_table(Index *ix, int log2) {
    ix->table = PyMem_Calloc((size_t)1 << log2, sizeof(Entry));
    if (!ix->table) return -1;
    ix->mask = ((size_t)1 << log2) - 1;
    ix->shift = 64 - log2;
    return 0;
}

static int grow(Index *ix) {
    Entry *old = ix->table;
    size_t buckets = ix->mask + 1;
    if (alloc_table(ix, 65 - ix->shift) < 0) {
        ix->table = old;
        PyErr_NoMemory();
        return -1;
    }
    for (size_t j = 0; j < buckets; j++)
        if (old[j].n) *probe(ix, old[j].key) = old[j];
    PyMem_Free(old);
    return 0;
}

/* Empty bucket i, shifting back the entries of its cluster that probed past it. */
static void delete_at(Index *ix, size_t i) {
    if (ix->table[i].cap) PyMem_Free(ix->table[i].h.many);
    size_t hole = i;
    for (size_t j = (i + 1) & ix->mask; ix->table[j].n; j = (j + 1) & ix->mask) {
        size_t home = bucket(ix, ix->table[j].key);
        /* the entry at j may move to the hole if its home is not in (hole, j] */
        if (((j - home) & ix->mask) >= ((j - hole) & ix->mask)) {
            ix->table[hole] = ix->table[j];
            hole = j;
        }
    }
    memset(&ix->table[hole], 0, sizeof(Entry));
    ix->used--;
}

/* where `number` is or would go in the sorted holders */
static inline uint32_t position(const uint32_t *hs, uint32_t n, uint32_t number) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (hs[mid] < number) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* 1 if added, 0 if the slot already held it, -1 on error */
static int add_holder(Entry *e, uint32_t number) {
    uint32_t at = position(holders(e), e->n, number);
    if (at < e->n && holders(e)[at] == number) return 0;
    if (!e->cap) {
        uint32_t *many = PyMem_Malloc(4 * sizeof(uint32_t));
        if (!many) return -1;
        many[0] = e->h.one;
        e->h.many = many;
        e->cap = 4;
    } else if (e->n == e->cap) {
        uint32_t *many = PyMem_Realloc(e->h.many, 2 * (size_t)e->cap * sizeof(uint32_t));
        if (!many) return -1;
        e->h.many = many;
        e->cap *= 2;
    }
    memmove(e->h.many + at + 1, e->h.many + at, (e->n - at) * sizeof(uint32_t));
    e->h.many[at] = number;
    e->n++;
    return 1;
}

/* 1 if removed, 0 if the slot did not hold it */
static int remove_holder(Entry *e, uint32_t number) {
    uint32_t *hs = e->cap ? e->h.many : &e->h.one;
    uint32_t at = position(hs, e->n, number);
    if (at == e->n || hs[at] != number) return 0;
    memmove(hs + at, hs + at + 1, (e->n - at - 1) * sizeof(uint32_t));
    e->n--;
    return 1;
}

static int key_of(PyObject *h, uint64_t *key) {
    *key = PyLong_AsUnsignedLongLongMask(h);
    return (*key == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

#define BATCH 16

/* Up to BATCH keys from items[at:len] into `keys`, each one's bucket prefetched: the
 * table is far larger than the caches, and a batch's misses overlap instead of
 * following one another. Returns how many, or -1 on error. */
static Py_ssize_t read_keys(const Index *ix, PyObject **items, Py_ssize_t at, Py_ssize_t len, uint64_t *keys) {
    Py_ssize_t n = len - at < BATCH ? len - at : BATCH;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (key_of(items[at + k], &keys[k]) < 0) return -1;
        __builtin_prefetch(&ix->table[bucket(ix, keys[k])]);
    }
    return n;
}

/* the slot's number, or -1 (no error set) when it holds nothing */
static Py_ssize_t number_of(Index *ix, PyObject *slot) {
    PyObject *n = PyDict_GetItemWithError(ix->numbers, slot);
    return n ? PyLong_AsSsize_t(n) : -1;
}

static Py_ssize_t join(Index *ix, PyObject *slot) {
    Py_ssize_t number;
    if (ix->free_len) {
        number = ix->free_numbers[--ix->free_len];
    } else {
        if (ix->nslots == ix->slots_cap) {
            Py_ssize_t cap = ix->slots_cap ? 2 * ix->slots_cap : 64;
            PyObject **slots = PyMem_Realloc(ix->slots, cap * sizeof(PyObject *));
            if (slots) ix->slots = slots;
            Py_ssize_t *counts = PyMem_Realloc(ix->counts, cap * sizeof(Py_ssize_t));
            if (counts) ix->counts = counts;
            uint32_t *free_numbers = PyMem_Realloc(ix->free_numbers, cap * sizeof(uint32_t));
            if (free_numbers) ix->free_numbers = free_numbers;
            uint32_t *scratch = PyMem_Realloc(ix->scratch, 2 * cap * sizeof(uint32_t));
            if (scratch) ix->scratch = scratch;
            if (!slots || !counts || !free_numbers || !scratch) {
                PyErr_NoMemory();
                return -1;
            }
            ix->slots_cap = cap;
        }
        number = ix->nslots++;
    }
    PyObject *n = PyLong_FromSsize_t(number);
    if (!n || PyDict_SetItem(ix->numbers, slot, n) < 0) {
        Py_XDECREF(n);
        ix->free_numbers[ix->free_len++] = (uint32_t)number;
        return -1;
    }
    Py_DECREF(n);
    Py_INCREF(slot);
    ix->slots[number] = slot;
    ix->counts[number] = 0;
    return number;
}

static PyObject *Index_stored(Index *ix, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "stored(slot, hashes) takes 2 arguments");
    Py_ssize_t number = number_of(ix, args[0]);
    if (number < 0 && (PyErr_Occurred() || (number = join(ix, args[0])) < 0)) return NULL;
    PyObject *seq = PySequence_Fast(args[1], "hashes must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uint64_t keys[BATCH];
    for (Py_ssize_t at = 0, n; at < len; at += n) {
        if ((n = read_keys(ix, items, at, len, keys)) < 0) goto fail;
        for (Py_ssize_t k = 0; k < n; k++) {
            /* room first, so that the probe's empty bucket is where a new key goes */
            if ((ix->used + 1) * 10 > (Py_ssize_t)(ix->mask + 1) * 7 && grow(ix) < 0) goto fail;
            Entry *e = probe(ix, keys[k]);
            if (!e->n) {
                *e = (Entry){.key = keys[k], .n = 1, .h.one = (uint32_t)number};
                ix->used++;
                ix->counts[number]++;
                continue;
            }
            int added = add_holder(e, (uint32_t)number);
            if (added < 0) {
                PyErr_NoMemory();
                goto fail;
            }
            ix->counts[number] += added;
        }
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    Py_DECREF(seq);
    return NULL;
}

static PyObject *Index_removed(Index *ix, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "removed(slot, hashes) takes 2 arguments");
    PyObject *seq = PySequence_Fast(args[1], "hashes must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq), missing = 0;
    Py_ssize_t number = number_of(ix, args[0]);
    if (number < 0) {
        Py_DECREF(seq);
        return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(len);
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uint64_t keys[BATCH];
    for (Py_ssize_t at = 0, n; at < len; at += n) {
        if ((n = read_keys(ix, items, at, len, keys)) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        for (Py_ssize_t k = 0; k < n; k++) {
            Entry *e = find(ix, keys[k]);
            if (!e || !remove_holder(e, (uint32_t)number)) {
                missing++;
                continue;
            }
            ix->counts[number]--;
            if (!e->n) delete_at(ix, (size_t)(e - ix->table));
        }
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(missing);
}

static PyObject *Index_cleared(Index *ix, PyObject *slot) {
    Py_ssize_t number = number_of(ix, slot);
    if (number < 0) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    /* a whole scan: clearing is rare (an engine's flush, a worker that left). A
     * deletion shifts entries back into the bucket just emptied, so it is looked at
     * again; entries that wrap around are looked at twice, which is harmless. */
    for (size_t i = 0; i <= ix->mask && ix->counts[number];) {
        Entry *e = &ix->table[i];
        if (e->n && remove_holder(e, (uint32_t)number)) {
            ix->counts[number]--;
            if (!e->n) {
                delete_at(ix, i);
                continue;
            }
        }
        i++;
    }
    if (PyDict_DelItem(ix->numbers, slot) < 0) return NULL;
    Py_CLEAR(ix->slots[number]);
    ix->free_numbers[ix->free_len++] = (uint32_t)number;
    Py_RETURN_NONE;
}

static PyObject *Index_forget(Index *ix, PyObject *instance_id) {
    PyObject *leaving = PyList_New(0);
    if (!leaving) return NULL;
    for (Py_ssize_t number = 0; number < ix->nslots; number++) {
        PyObject *slot = ix->slots[number];
        if (!slot || !PyTuple_Check(slot) || PyTuple_GET_SIZE(slot) < 1) continue;
        int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(slot, 0), instance_id, Py_EQ);
        if (same < 0 || (same && PyList_Append(leaving, slot) < 0)) goto fail;
    }
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(leaving); k++) {
        /* through the method, so a subclass's bookkeeping sees the slot go */
        PyObject *r = PyObject_CallMethod((PyObject *)ix, "cleared", "(O)", PyList_GET_ITEM(leaving, k));
        if (!r) goto fail;
        Py_DECREF(r);
    }
    Py_DECREF(leaving);
    Py_RETURN_NONE;
fail:
    Py_DECREF(leaving);
    return NULL;
}

static int record(Index *ix, PyObject *result, const uint32_t *numbers, Py_ssize_t n, Py_ssize_t depth) {
    if (!n) return 0;
    PyObject *d = PyLong_FromSsize_t(depth);
    if (!d) return -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (PyDict_SetItem(result, ix->slots[numbers[k]], d) < 0) {
            Py_DECREF(d);
            return -1;
        }
    }
    Py_DECREF(d);
    return 0;
}

static PyObject *Index_overlaps(Index *ix, PyObject *hashes) {
    PyObject *seq = PySequence_Fast(hashes, "hashes must be a sequence");
    if (!seq) return NULL;
    PyObject *result = PyDict_New();
    if (!result) goto fail;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq), depth = 0, na = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uint32_t *active = ix->scratch, *spare = ix->scratch + ix->slots_cap;
    for (; depth < len; depth++) {
        uint64_t key;
        if (key_of(items[depth], &key) < 0) goto fail;
        const Entry *e = find(ix, key);
        if (!e) break;
        const uint32_t *hs = holders(e);
        if (!depth) {
            memcpy(active, hs, e->n * sizeof(uint32_t));
            na = e->n;
            continue;
        }
        if (e->n == na && !memcmp(hs, active, na * sizeof(uint32_t))) continue;
        /* keep active & holders (both sorted); the ones dropped stop at this depth */
        Py_ssize_t kept = 0, dropped = 0, j = 0;
        for (Py_ssize_t a = 0; a < na; a++) {
            while (j < e->n && hs[j] < active[a]) j++;
            if (j < e->n && hs[j] == active[a]) active[kept++] = active[a];
            else spare[dropped++] = active[a];
        }
        if (record(ix, result, spare, dropped, depth) < 0) goto fail;
        na = kept;
        if (!na) break;
    }
    if (record(ix, result, active, na, depth) < 0) goto fail;
    Py_DECREF(seq);
    return result;
fail:
    Py_XDECREF(result);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *Index_blocks(Index *ix, PyObject *slot) {
    Py_ssize_t number = number_of(ix, slot);
    if (number < 0) return PyErr_Occurred() ? NULL : PyLong_FromLong(0);
    return PyLong_FromSsize_t(ix->counts[number]);
}

static Py_ssize_t Index_len(Index *ix) { return ix->used; }

static PyObject *Index_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Index *ix = (Index *)type->tp_alloc(type, 0);
    if (!ix) return NULL;
    ix->numbers = PyDict_New();
    if (!ix->numbers || alloc_table(ix, 10) < 0) {
        Py_DECREF(ix);
        return PyErr_NoMemory();
    }
    return (PyObject *)ix;
}

static int Index_traverse(Index *ix, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(ix));
    Py_VISIT(ix->numbers);
    return 0; /* the slots are in `numbers` too */
}

static int Index_clear(Index *ix) {
    Py_CLEAR(ix->numbers);
    return 0;
}

static void Index_dealloc(Index *ix) {
    PyTypeObject *type = Py_TYPE(ix);
    PyObject_GC_UnTrack(ix);
    Index_clear(ix);
    if (ix->table) {
        for (size_t i = 0; i <= ix->mask; i++)
            if (ix->table[i].cap) PyMem_Free(ix->table[i].h.many);
        PyMem_Free(ix->table);
    }
    for (Py_ssize_t k = 0; k < ix->nslots; k++) Py_XDECREF(ix->slots[k]);
    PyMem_Free(ix->slots);
    PyMem_Free(ix->counts);
    PyMem_Free(ix->free_numbers);
    PyMem_Free(ix->scratch);
    type->tp_free(ix);
    Py_DECREF(type);
}

static PyMethodDef Index_methods[] = {
    {"stored", (PyCFunction)(void (*)(void))Index_stored, METH_FASTCALL,
     "stored(slot, hashes): the slot now holds these blocks."},
    {"removed", (PyCFunction)(void (*)(void))Index_removed, METH_FASTCALL,
     "removed(slot, hashes) -> how many of the hashes the slot did not hold (block_not_found)."},
    {"cleared", (PyCFunction)Index_cleared, METH_O, "cleared(slot): the slot holds nothing any more."},
    {"forget", (PyCFunction)Index_forget, METH_O, "forget(instance_id): clear every DP rank of a worker that left."},
    {"overlaps", (PyCFunction)Index_overlaps, METH_O,
     "overlaps(hashes) -> {slot: leading pages held} for every slot holding the first page."},
    {"blocks", (PyCFunction)Index_blocks, METH_O, "blocks(slot) -> how many blocks the slot holds."},
    {NULL},
};

static PyType_Slot Index_slots[] = {
    {Py_tp_doc, "The prefix index: for each block's sequence hash, the (worker, DP rank) slots holding it."},
    {Py_tp_new, Index_new},
    {Py_tp_dealloc, Index_dealloc},
    {Py_tp_traverse, Index_traverse},
    {Py_tp_clear, Index_clear},
    {Py_tp_methods, Index_methods},
    {Py_sq_length, Index_len},
    {0, NULL},
};

static PyType_Spec Index_spec = {
    .name = "orchestrator.router._index.PrefixIndex",
    .basicsize = sizeof(Index),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Index_slots,
};

static int exec_module(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &Index_spec, NULL);
    if (!type) return -1;
    int rc = PyModule_AddObjectRef(module, "PrefixIndex", type);
    Py_DECREF(type);
    return rc;
}

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, exec_module}, {0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, .m_name = "orchestrator.router._index",
    .m_doc = "The KV router's prefix index, native.", .m_size = 0, .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__index(void) { return PyModuleDef_Init(&module_def); }
