/* Optional C core of sifirdan's byte-level BPE: the same algorithms as train.py / base.py, ~20x faster.
 *
 *   learn_merges(words: list[bytes], freqs: list[int], num_tokens: int, progress) -> [(a, b, new), ...]
 *       exactly sifirdan.tokenizer.train.learn_merges (tests compare the two merge by merge).
 *   Encoder(byte_ids: list[int], merges: [(a, b, new), ...]).encode(data: bytes) -> list[int]
 *       exactly Tokenizer._bpe: merge the adjacent pair of lowest rank until none is left.
 *
 * Built by `pip install -e .` (setup.py); if it is missing the package silently uses the Python code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ uint64 -> int32 hash map */
typedef struct {
    uint64_t *keys;
    int32_t *vals;
    size_t cap, n;
} map_t;

#define EMPTY_KEY UINT64_MAX

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static int map_init(map_t *m, size_t cap) {
    size_t c = 16;
    while (c < cap) c <<= 1;
    m->cap = c; m->n = 0;
    m->keys = (uint64_t *)malloc(c * sizeof(uint64_t));
    m->vals = (int32_t *)malloc(c * sizeof(int32_t));
    if (!m->keys || !m->vals) { free(m->keys); free(m->vals); m->keys = NULL; m->vals = NULL; return -1; }
    memset(m->keys, 0xff, c * sizeof(uint64_t));
    return 0;
}

static void map_free(map_t *m) { free(m->keys); free(m->vals); m->keys = NULL; m->vals = NULL; }

static inline int32_t map_get(const map_t *m, uint64_t k) {
    size_t mask = m->cap - 1, i = mix64(k) & mask;
    while (m->keys[i] != EMPTY_KEY) {
        if (m->keys[i] == k) return m->vals[i];
        i = (i + 1) & mask;
    }
    return -1;
}

static void map_insert_nogrow(map_t *m, uint64_t k, int32_t v) {
    size_t mask = m->cap - 1, i = mix64(k) & mask;
    while (m->keys[i] != EMPTY_KEY) {
        if (m->keys[i] == k) { m->vals[i] = v; return; }
        i = (i + 1) & mask;
    }
    m->keys[i] = k; m->vals[i] = v; m->n++;
}

static int map_put(map_t *m, uint64_t k, int32_t v) {
    if ((m->n + 1) * 2 > m->cap) {
        map_t bigger;
        if (map_init(&bigger, m->cap * 2)) return -1;
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i] != EMPTY_KEY) map_insert_nogrow(&bigger, m->keys[i], m->vals[i]);
        map_free(m);
        *m = bigger;
    }
    map_insert_nogrow(m, k, v);
    return 0;
}

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

/* ------------------------------------------------------------------ training */
typedef struct {
    int32_t a, b;
    int64_t count;
    int32_t *occ;      /* words that (may) contain the pair; stale entries are skipped */
    int32_t n_occ, cap_occ;
    int32_t last_word; /* last word appended to occ (avoid immediate duplicates) */
    int32_t stamp;     /* merge step that last touched this pair */
    int merged;
} pair_t;

typedef struct { int64_t count; int32_t a, b, pi; } entry_t;

typedef struct {
    pair_t *pairs;
    int32_t n_pairs, cap_pairs;
    map_t index;
    entry_t *heap;
    size_t n_heap, cap_heap;
} trainer_t;

static int32_t get_pair(trainer_t *t, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b);
    int32_t pi = map_get(&t->index, k);
    if (pi >= 0) return pi;
    if (t->n_pairs == t->cap_pairs) {
        int32_t cap = t->cap_pairs ? t->cap_pairs * 2 : 1024;
        pair_t *p = (pair_t *)realloc(t->pairs, (size_t)cap * sizeof(pair_t));
        if (!p) return -1;
        t->pairs = p; t->cap_pairs = cap;
    }
    pi = t->n_pairs++;
    pair_t *p = &t->pairs[pi];
    p->a = a; p->b = b; p->count = 0; p->occ = NULL; p->n_occ = p->cap_occ = 0;
    p->last_word = -1; p->stamp = -1; p->merged = 0;
    if (map_put(&t->index, k, pi)) return -1;
    return pi;
}

static int add_occ(pair_t *p, int32_t wi) {
    if (p->last_word == wi) return 0;
    if (p->n_occ == p->cap_occ) {
        int32_t cap = p->cap_occ ? p->cap_occ * 2 : 4;
        int32_t *o = (int32_t *)realloc(p->occ, (size_t)cap * sizeof(int32_t));
        if (!o) return -1;
        p->occ = o; p->cap_occ = cap;
    }
    p->occ[p->n_occ++] = wi;
    p->last_word = wi;
    return 0;
}

/* max-heap order: higher count first, then the smaller (a, b) */
static inline int entry_before(const entry_t *x, const entry_t *y) {
    if (x->count != y->count) return x->count > y->count;
    if (x->a != y->a) return x->a < y->a;
    return x->b < y->b;
}

static int heap_push(trainer_t *t, const trainer_t *unused, pair_t *p, int32_t pi) {
    (void)unused;
    if (t->n_heap == t->cap_heap) {
        size_t cap = t->cap_heap ? t->cap_heap * 2 : 4096;
        entry_t *h = (entry_t *)realloc(t->heap, cap * sizeof(entry_t));
        if (!h) return -1;
        t->heap = h; t->cap_heap = cap;
    }
    entry_t e = {p->count, p->a, p->b, pi};
    size_t i = t->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!entry_before(&e, &t->heap[parent])) break;
        t->heap[i] = t->heap[parent];
        i = parent;
    }
    t->heap[i] = e;
    return 0;
}

static entry_t heap_pop(trainer_t *t) {
    entry_t top = t->heap[0];
    entry_t last = t->heap[--t->n_heap];
    size_t i = 0, n = t->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const entry_t *bv = &last;
        if (l < n && entry_before(&t->heap[l], bv)) { best = l; bv = &t->heap[l]; }
        if (r < n && entry_before(&t->heap[r], bv)) { best = r; }
        if (best == i) break;
        t->heap[i] = t->heap[best];
        i = best;
    }
    if (n) t->heap[i] = last;
    return top;
}

static void trainer_free(trainer_t *t) {
    for (int32_t i = 0; i < t->n_pairs; i++) free(t->pairs[i].occ);
    free(t->pairs);
    free(t->heap);
    map_free(&t->index);
}

/* Remember that pair pj changed in merge step `step` (once per step): its heap entry is refreshed after
   the step. Returns -1 when out of memory. */
static int mark_touched(pair_t *q, int32_t pj, int32_t step, int32_t **touched, size_t *n, size_t *cap) {
    if (q->stamp == step) return 0;
    q->stamp = step;
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 1024;
        int32_t *tt = (int32_t *)realloc(*touched, c * sizeof(int32_t));
        if (!tt) return -1;
        *touched = tt;
        *cap = c;
    }
    (*touched)[(*n)++] = pj;
    return 0;
}

static PyObject *learn_merges(PyObject *self, PyObject *args) {
    PyObject *words, *freqs, *progress;
    Py_ssize_t num_tokens;
    if (!PyArg_ParseTuple(args, "OOnO", &words, &freqs, &num_tokens, &progress)) return NULL;
    words = PySequence_Fast(words, "words must be a sequence of bytes");
    if (!words) return NULL;
    freqs = PySequence_Fast(freqs, "freqs must be a sequence of int");
    if (!freqs) { Py_DECREF(words); return NULL; }
    Py_ssize_t n_words = PySequence_Fast_GET_SIZE(words);
    if (PySequence_Fast_GET_SIZE(freqs) != n_words) {
        PyErr_SetString(PyExc_ValueError, "words and freqs differ in length");
        Py_DECREF(words); Py_DECREF(freqs); return NULL;
    }

    PyObject *result = NULL, *vocab = NULL, *by_bytes = NULL;
    int32_t *sym = NULL, *wlen = NULL, *touched = NULL;
    int64_t *wstart = NULL, *wfreq = NULL;
    size_t n_touched = 0, cap_touched = 0;
    trainer_t t;
    memset(&t, 0, sizeof t);
    if (map_init(&t.index, 1 << 16)) { PyErr_NoMemory(); goto done; }

    /* words -> one flat symbol buffer */
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < n_words; i++) {
        PyObject *w = PySequence_Fast_GET_ITEM(words, i);
        if (!PyBytes_Check(w)) { PyErr_SetString(PyExc_TypeError, "words must be bytes"); goto done; }
        total += PyBytes_GET_SIZE(w);
    }
    sym = (int32_t *)malloc((size_t)(total ? total : 1) * sizeof(int32_t));
    wlen = (int32_t *)malloc((size_t)(n_words ? n_words : 1) * sizeof(int32_t));
    wstart = (int64_t *)malloc((size_t)(n_words ? n_words : 1) * sizeof(int64_t));
    wfreq = (int64_t *)malloc((size_t)(n_words ? n_words : 1) * sizeof(int64_t));
    if (!sym || !wlen || !wstart || !wfreq) { PyErr_NoMemory(); goto done; }
    int64_t pos = 0;
    for (Py_ssize_t i = 0; i < n_words; i++) {
        PyObject *w = PySequence_Fast_GET_ITEM(words, i);
        const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(w);
        Py_ssize_t n = PyBytes_GET_SIZE(w);
        wstart[i] = pos; wlen[i] = (int32_t)n;
        for (Py_ssize_t j = 0; j < n; j++) sym[pos++] = s[j];
        wfreq[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(freqs, i));
        if (wfreq[i] == -1 && PyErr_Occurred()) goto done;
    }

    /* initial pair counts and index */
    for (Py_ssize_t i = 0; i < n_words; i++) {
        int32_t *s = sym + wstart[i];
        for (int32_t j = 0; j + 1 < wlen[i]; j++) {
            int32_t pi = get_pair(&t, s[j], s[j + 1]);
            if (pi < 0) { PyErr_NoMemory(); goto done; }
            t.pairs[pi].count += wfreq[i];
            if (add_occ(&t.pairs[pi], (int32_t)i)) { PyErr_NoMemory(); goto done; }
        }
    }
    for (int32_t pi = 0; pi < t.n_pairs; pi++)
        if (t.pairs[pi].count > 0 && heap_push(&t, NULL, &t.pairs[pi], pi)) { PyErr_NoMemory(); goto done; }

    /* the vocabulary as Python bytes (for the "same bytes -> same id" rule) */
    vocab = PyList_New(0);
    by_bytes = PyDict_New();
    result = PyList_New(0);
    if (!vocab || !by_bytes || !result) goto fail;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        PyObject *tok = PyBytes_FromStringAndSize(&c, 1);
        PyObject *id = PyLong_FromLong(b);
        if (!tok || !id || PyList_Append(vocab, tok) || PyDict_SetItem(by_bytes, tok, id)) {
            Py_XDECREF(tok); Py_XDECREF(id); goto fail;
        }
        Py_DECREF(tok); Py_DECREF(id);
    }

    int32_t step = 0;
    while (PyList_GET_SIZE(vocab) < num_tokens && t.n_heap > 0) {
        entry_t e = heap_pop(&t);
        pair_t *p = &t.pairs[e.pi];
        if (p->count != e.count || e.count <= 0) continue; /* stale */
        int32_t a = p->a, b = p->b, pi_ab = e.pi;

        PyObject *nb = PyBytes_FromStringAndSize(NULL, 0);
        if (!nb) goto fail;
        PyBytes_Concat(&nb, PyList_GET_ITEM(vocab, a));
        if (!nb) goto fail;
        PyBytes_Concat(&nb, PyList_GET_ITEM(vocab, b));
        if (!nb) goto fail;
        int32_t newid;
        PyObject *found = PyDict_GetItemWithError(by_bytes, nb);
        if (found) {
            newid = (int32_t)PyLong_AsLong(found);
        } else {
            if (PyErr_Occurred()) { Py_DECREF(nb); goto fail; }
            newid = (int32_t)PyList_GET_SIZE(vocab);
            PyObject *id = PyLong_FromLong(newid);
            if (!id || PyList_Append(vocab, nb) || PyDict_SetItem(by_bytes, nb, id)) { Py_XDECREF(id); Py_DECREF(nb); goto fail; }
            Py_DECREF(id);
            if (progress != Py_None) {
                PyObject *r = PyObject_CallFunction(progress, "i", 1);
                if (!r) { Py_DECREF(nb); goto fail; }
                Py_DECREF(r);
            }
        }
        Py_DECREF(nb);
        if (!t.pairs[pi_ab].merged) {
            t.pairs[pi_ab].merged = 1;
            PyObject *m = Py_BuildValue("(iii)", a, b, newid);
            if (!m || PyList_Append(result, m)) { Py_XDECREF(m); goto fail; }
            Py_DECREF(m);
        }

        /* detach the occurrence list: the merged pair cannot reappear while we rewrite words */
        int32_t *occ = t.pairs[pi_ab].occ;
        int32_t n_occ = t.pairs[pi_ab].n_occ;
        t.pairs[pi_ab].occ = NULL; t.pairs[pi_ab].n_occ = t.pairs[pi_ab].cap_occ = 0; t.pairs[pi_ab].last_word = -1;
        step++;
        n_touched = 0;
        for (int32_t k = 0; k < n_occ; k++) {
            int32_t wi = occ[k];
            int32_t *s = sym + wstart[wi];
            int32_t n = wlen[wi];
            int has = 0;
            for (int32_t j = 0; j + 1 < n; j++)
                if (s[j] == a && s[j + 1] == b) { has = 1; break; }
            if (!has) continue;
            int64_t f = wfreq[wi];
            /* take the word's old pairs off the counts */
            for (int32_t j = 0; j + 1 < n; j++) {
                int32_t pj = map_get(&t.index, pair_key(s[j], s[j + 1]));
                pair_t *q = &t.pairs[pj];
                q->count -= f;
                if (mark_touched(q, pj, step, &touched, &n_touched, &cap_touched)) { free(occ); PyErr_NoMemory(); goto fail; }
            }
            /* rewrite in place, left to right, non-overlapping */
            int32_t w = 0;
            for (int32_t j = 0; j < n;) {
                if (j + 1 < n && s[j] == a && s[j + 1] == b) { s[w++] = newid; j += 2; }
                else s[w++] = s[j++];
            }
            wlen[wi] = n = w;
            /* put the new pairs back */
            for (int32_t j = 0; j + 1 < n; j++) {
                int32_t pj = get_pair(&t, s[j], s[j + 1]);
                if (pj < 0) { free(occ); PyErr_NoMemory(); goto fail; }
                pair_t *q = &t.pairs[pj];
                q->count += f;
                if (add_occ(q, wi)) { free(occ); PyErr_NoMemory(); goto fail; }
                if (mark_touched(q, pj, step, &touched, &n_touched, &cap_touched)) { free(occ); PyErr_NoMemory(); goto fail; }
            }
        }
        free(occ);
        for (size_t k = 0; k < n_touched; k++) {
            pair_t *q = &t.pairs[touched[k]];
            if (q->count > 0 && heap_push(&t, NULL, q, touched[k])) { PyErr_NoMemory(); goto fail; }
        }
    }
    goto done;

fail:
    Py_CLEAR(result);
done:
    Py_XDECREF(vocab);
    Py_XDECREF(by_bytes);
    free(sym); free(wlen); free(wstart); free(wfreq); free(touched);
    trainer_free(&t);
    Py_DECREF(words);
    Py_DECREF(freqs);
    return result;
}

/* ------------------------------------------------------------------ encoding */
typedef struct {
    PyObject_HEAD
    int32_t byte_ids[256];
    map_t ranks;    /* pair -> rank (the first rank a pair appears with) */
    int32_t *ma, *mb, *mnew;
    Py_ssize_t n_merges;
} Encoder;

static void Encoder_dealloc(Encoder *self) {
    map_free(&self->ranks);
    free(self->ma); free(self->mb); free(self->mnew);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kw) {
    PyObject *byte_ids, *merges;
    if (!PyArg_ParseTuple(args, "OO", &byte_ids, &merges)) return -1;
    PyObject *bi = PySequence_Fast(byte_ids, "byte_ids must be a sequence");
    if (!bi) return -1;
    if (PySequence_Fast_GET_SIZE(bi) != 256) { Py_DECREF(bi); PyErr_SetString(PyExc_ValueError, "need 256 byte ids"); return -1; }
    for (int i = 0; i < 256; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(bi, i));
        if (v == -1 && PyErr_Occurred()) { Py_DECREF(bi); return -1; }
        self->byte_ids[i] = (int32_t)v;
    }
    Py_DECREF(bi);
    PyObject *ms = PySequence_Fast(merges, "merges must be a sequence");
    if (!ms) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ms);
    map_free(&self->ranks); free(self->ma); free(self->mb); free(self->mnew);
    self->ma = (int32_t *)malloc((size_t)(n + 1) * sizeof(int32_t));
    self->mb = (int32_t *)malloc((size_t)(n + 1) * sizeof(int32_t));
    self->mnew = (int32_t *)malloc((size_t)(n + 1) * sizeof(int32_t));
    if (!self->ma || !self->mb || !self->mnew || map_init(&self->ranks, (size_t)(2 * n + 16))) { Py_DECREF(ms); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t r = 0; r < n; r++) {
        int a, b, c;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(ms, r), "iii", &a, &b, &c)) { Py_DECREF(ms); return -1; }
        self->ma[r] = a; self->mb[r] = b; self->mnew[r] = c;
        uint64_t k = pair_key(a, b);
        if (map_get(&self->ranks, k) < 0 && map_put(&self->ranks, k, (int32_t)r)) { Py_DECREF(ms); PyErr_NoMemory(); return -1; }
    }
    self->n_merges = n;
    Py_DECREF(ms);
    return 0;
}

static PyObject *Encoder_encode(Encoder *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) { PyErr_SetString(PyExc_TypeError, "encode needs bytes"); return NULL; }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    int32_t stack[128];
    int32_t *s = n <= 128 ? stack : (int32_t *)malloc((size_t)n * sizeof(int32_t));
    if (!s) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) s[i] = self->byte_ids[data[i]];
    while (n >= 2) {
        int32_t best = INT32_MAX;
        for (Py_ssize_t i = 0; i + 1 < n; i++) {
            int32_t r = map_get(&self->ranks, pair_key(s[i], s[i + 1]));
            if (r >= 0 && r < best) best = r;
        }
        if (best == INT32_MAX) break;
        int32_t a = self->ma[best], b = self->mb[best], c = self->mnew[best];
        Py_ssize_t w = 0;
        for (Py_ssize_t i = 0; i < n;) {
            if (i + 1 < n && s[i] == a && s[i + 1] == b) { s[w++] = c; i += 2; }
            else s[w++] = s[i++];
        }
        n = w;
    }
    PyObject *out = PyList_New(n);
    if (out) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *v = PyLong_FromLong(s[i]);
            if (!v) { Py_CLEAR(out); break; }
            PyList_SET_ITEM(out, i, v);
        }
    }
    if (s != stack) free(s);
    return out;
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_O, "BPE-encode one pre-token's bytes into ids."},
    {NULL, NULL, 0, NULL},
};

static PyObject *Encoder_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Encoder *self = (Encoder *)type->tp_alloc(type, 0);
    if (self) { memset(&self->ranks, 0, sizeof(map_t)); self->ma = self->mb = self->mnew = NULL; self->n_merges = 0; }
    return (PyObject *)self;
}

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sifirdan.tokenizer._fastbpe.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(byte_ids, merges): BPE encoding of one pre-token at a time.",
    .tp_new = Encoder_new,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

static PyMethodDef module_methods[] = {
    {"learn_merges", learn_merges, METH_VARARGS, "learn_merges(words, freqs, num_tokens, progress) -> merges"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_fastbpe", "C core of sifirdan's byte-level BPE.", -1, module_methods};

PyMODINIT_FUNC PyInit__fastbpe(void) {
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) { Py_DECREF(&EncoderType); Py_DECREF(m); return NULL; }
    return m;
}
