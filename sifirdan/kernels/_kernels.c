/* sifirdan/kernels/_kernels.c -- CPU kernels for the parts of a small GPT's training step that are not matmuls.
 *
 * Why: at the guide's shape (batch 32 x block 128, n_embd 128, 4 heads of 32) a CPU training step is
 * mostly matrix multiplies that already run near the chip's peak; what is left is memory traffic and
 * PyTorch's general-purpose kernels for small operations. Seven of them are done here, each the same math
 * as PyTorch's (tests hold them to it; only float rounding differs):
 *   - causal attention. torch's CPU flash kernel works in 128-key blocks, so at T = 128 it computes the
 *     whole T x T score matrix although half of it is masked, and the (B, T, 3C) -> (B, H, T, D) layout
 *     changes around it cost extra copies (a transpose, a cat and zero-fills in backward). Here each
 *     (batch, head) pair reads q, k, v (adding the qkv bias) straight from the packed projection, skips the
 *     masked tiles, and writes its output -- in backward d(qkv) and d(bias) -- straight into packed layouts.
 *   - bias + GELU: nn.Linear's addmm would broadcast the bias into the whole 4x-wide activation first, and
 *     its gradient would need a pass of its own; here both ride along the GELU passes.
 *   - cross-entropy: loss and gradient in one pass over the logits (PyTorch: log-probs, then a zero-filled
 *     one-hot buffer and two more passes in backward).
 *   - dropout: the mask is a hash of (seed, element index), regenerated in backward, never stored
 *     (PyTorch's CPU bernoulli_ was ~4.5 ms per layer here).
 *   - residual add + LayerNorm: a pre-LN block's "x + sublayer(...)" is followed by the LayerNorm of the next
 *     sub-layer; PyTorch broadcasts the sub-layer's output bias (addmm), adds, normalises, and in backward
 *     runs the LayerNorm backward, accumulates the residual gradient and sums the bias gradient, each a
 *     pass over the (B*T, n_embd) activations. Here forward and backward are one pass each. The same kernel
 *     does RMSNorm (the default block's norm): the mean is taken as zero.
 *   - SwiGLU's gate silu(g) * u: PyTorch runs silu, a multiply, and in backward two multiplies and a silu
 *     backward, each a pass over the hidden activations; here one pass each way.
 *   - rotary positions: PyTorch rotates q and k per head with four multiplies and a concatenation each, and
 *     the attention kernel then needs q | k | v re-packed; here one pass rotates them in the packed layout
 *     (backward: the same pass rotating back).
 * Everything is float32, row-major and contiguous; the Python side (ops.py) checks that.
 *
 * Portable C: GCC/Clang vector extensions, compiled once per instruction set (_kernels_impl.h) with that
 * machine's own vector width (16 floats for AVX-512, 8 for AVX2), and OpenMP threads. Attention gives each (batch, head) pair to one thread from start to end, so its results do not
 * depend on the thread count; the row-wise kernels add per-thread partial sums in thread order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define W 16 /* the widest copy's floats per vector: scratch and per-thread sums are padded to it */
#define R 8  /* the most query rows per tile of any copy (scratch is sized for it) */
#define QC 256 /* backward: query rows per chunk (P and dS are kept for a chunk: QC x T floats each) */
#define KB 4   /* backward: keys whose dK and dV rows stay in registers while a chunk's rows stream past */

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef uint32_t u16v __attribute__((vector_size(64)));
#define IOTA ((v16){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})

static inline int rup(int x, int m) { return (x + m - 1) / m * m; }

/* ---------------------------------------------------------------------------------------------- attention
 * qkv: (B, T, 3C) with C = H * D, the packed output of the qkv projection: q | k | v, each head's D
 * channels side by side. out: (B, T, C), heads concatenated (what the output projection reads).
 * lse: (B, H, T) log-sum-exp of each query's scores, kept for backward (which recomputes the
 * probabilities from it instead of storing the T x T matrix: what is kept between the passes is O(T); the
 * backward's scratch holds P and dS for up to QC query rows, O(QC x T) per thread). */

typedef struct {
    float *kt, *vt, *vs, *qs, *ks, *dys, *dk, *dv, *p, *ds;
} Scratch; /* one per thread; zero padding is part of the algorithm, hence calloc */

static int scratch_alloc(Scratch *s, int T, int D, int backward) {
    size_t Tp = rup(T, W), Dp2 = rup(D, 2 * W), rows = backward ? (rup(T, R) < QC ? rup(T, R) : QC) : R;
    memset(s, 0, sizeof *s);
    s->kt = calloc(D * Tp, sizeof(float)); /* both passes: keys transposed, queries, P (a tile / a chunk) */
    s->qs = calloc(Tp * Dp2, sizeof(float));
    s->p = calloc(rows * Tp, sizeof(float));
    int ok = s->kt && s->qs && s->p;
    if (!backward) { /* forward: value rows */
        s->vs = calloc(Tp * Dp2, sizeof(float));
        ok = ok && s->vs;
    } else { /* backward: values transposed, key rows, dY rows, dK / dV accumulators, a chunk of dS */
        s->vt = calloc(D * Tp, sizeof(float));
        s->ks = calloc(Tp * Dp2, sizeof(float));
        s->dys = calloc(Tp * Dp2, sizeof(float));
        s->dk = calloc(Tp * Dp2, sizeof(float));
        s->dv = calloc(Tp * Dp2, sizeof(float));
        s->ds = calloc(rows * Tp, sizeof(float));
        ok = ok && s->vt && s->ks && s->dys && s->dk && s->dv && s->ds;
    }
    return ok;
}

static void scratch_free(Scratch *s) {
    free(s->kt); free(s->vt); free(s->vs); free(s->qs); free(s->ks); free(s->dys);
    free(s->dk); free(s->dv); free(s->p); free(s->ds);
}

/* ---------------------------------------------------------------------------------- one copy per ISA
 * The kernel bodies (_kernels_impl.h) are compiled once for the baseline ISA and, on x86-64 with GCC,
 * again for AVX2+FMA and for AVX-512; PyInit picks the widest one this CPU runs (__builtin_cpu_supports). */
typedef void (*attn_fwd_fn)(const float *, const float *, float *, float *, int, int, int, int, int, float, Scratch *);
typedef void (*attn_bwd_fn)(const float *, const float *, const float *, const float *, float *, float *, int, int, int,
                            int, int, float, Scratch *);
typedef double (*ce_fn)(const float *, const int64_t *, float *, int64_t, int64_t, int, int64_t, float, int64_t *);
typedef void (*dropout_fn)(const float *, float *, int64_t, int64_t, uint32_t, float, uint32_t, uint32_t);
typedef void (*gelu_fwd_fn)(const float *, const float *, float *, int64_t, int64_t, int);
typedef void (*gelu_bwd_fn)(const float *, const float *, const float *, float *, float *, int64_t, int64_t, int);
typedef void (*addln_fwd_fn)(const float *, const float *, const float *, const float *, const float *, float *, float *,
                             float *, float *, float, int, int64_t, int64_t, int);
typedef void (*addln_bwd_fn)(const float *, const float *, const float *, const float *, const float *, const float *,
                             float *, float *, float *, float *, int, int64_t, int64_t, int);
typedef void (*silu_fwd_fn)(const float *, const float *, float *, int64_t, int64_t);
typedef void (*silu_bwd_fn)(const float *, const float *, const float *, float *, float *, int64_t, int64_t);
typedef void (*rope_fn)(const float *, const float *, const float *, float *, float, int64_t, int64_t, int, int, int);

#define SFX(name) name##_generic
#define VW 16 /* the compiler splits these for the baseline ISA (this copy is a fallback, not a fast path) */
#define RT 8
#define KBT 4
#include "_kernels_impl.h"
#undef SFX
#undef VW
#undef RT
#undef KBT

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define SIFIRDAN_X86_CLONES 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SFX(name) name##_avx2
#define VW 8  /* ymm registers: 8 floats, 16 of them */
#define RT 4
#define KBT 2
#include "_kernels_impl.h"
#undef SFX
#undef VW
#undef RT
#undef KBT
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#define SFX(name) name##_avx512
#define SIFIRDAN_AVX512 1 /* lets _kernels_impl.h use AVX-512 instructions the vector extensions do not reach */
#define VW 16 /* zmm registers: 16 floats, 32 of them */
#define RT 8
#define KBT 4
#include "_kernels_impl.h"
#undef SIFIRDAN_AVX512
#undef SFX
#undef VW
#undef RT
#undef KBT
#pragma GCC pop_options
#endif

static attn_fwd_fn attention_forward_head;
static attn_bwd_fn attention_backward_head;
static ce_fn cross_entropy_rows;
static dropout_fn dropout_range;
static gelu_fwd_fn bias_gelu_rows;
static gelu_bwd_fn bias_gelu_backward_rows;
static addln_fwd_fn add_layernorm_rows;
static addln_bwd_fn add_layernorm_backward_rows;
static silu_fwd_fn silu_mul_range;
static silu_bwd_fn silu_mul_backward_range;
static rope_fn rope_rows;
static const char *isa;

#define USE_ISA(sfx)                                              \
    do {                                                          \
        attention_forward_head = attention_forward_head_##sfx;    \
        attention_backward_head = attention_backward_head_##sfx;  \
        cross_entropy_rows = cross_entropy_rows_##sfx;            \
        dropout_range = dropout_range_##sfx;                      \
        bias_gelu_rows = bias_gelu_rows_##sfx;                    \
        bias_gelu_backward_rows = bias_gelu_backward_rows_##sfx;  \
        add_layernorm_rows = add_layernorm_rows_##sfx;            \
        add_layernorm_backward_rows = add_layernorm_backward_rows_##sfx; \
        silu_mul_range = silu_mul_range_##sfx;                    \
        silu_mul_backward_range = silu_mul_backward_range_##sfx;  \
        rope_rows = rope_rows_##sfx;                              \
        isa = #sfx;                                               \
    } while (0)

/* The widest copy this CPU runs; SIFIRDAN_KERNELS_ISA=generic|avx2 asks for a narrower one (tests and
 * benchmarks of the other copies on a wider machine). */
static void pick_isa(void) {
    USE_ISA(generic);
    const char *want = getenv("SIFIRDAN_KERNELS_ISA");
    if (want && strcmp(want, "generic") == 0) return;
#ifdef SIFIRDAN_X86_CLONES
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
    if (avx512 && !(want && strcmp(want, "avx2") == 0))
        USE_ISA(avx512);
    else if (avx2)
        USE_ISA(avx2);
#endif
}

/* ------------------------------------------------------------------------------------- thread helpers
 * Row-wise kernels give each OpenMP thread one contiguous range (a multiple of `align` long): partial
 * results then belong to a thread number, and are combined in thread order -- deterministic. */
static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Inside a parallel region: this thread's number and its range [*r0, *r1) of n items. */
static int thread_range(int64_t n, int64_t align, int64_t *r0, int64_t *r1) {
    int t = 0, used = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    used = omp_get_num_threads();
#endif
    int64_t chunk = (n + used - 1) / used;
    chunk = (chunk + align - 1) / align * align;
    *r0 = t * chunk;
    *r1 = *r0 + chunk < n ? *r0 + chunk : n;
    return t;
}

/* Forward when dout is NULL, else backward. bias (3C) may be NULL; in backward dbias (3C) gets its gradient
 * (per-thread partial sums added in thread order). Returns 0, or -1 when scratch memory could not be had. */
static int attention(const float *qkv, const float *bias, const float *dout, float *out, float *lse, float *dqkv,
                     float *dbias, int B, int T, int H, int D, float scale) {
    int nt = max_threads(), failed = 0;
    const size_t C3 = 3 * (size_t)H * D;
    float *partial = NULL;
    if (dout && bias && dbias) {
        partial = calloc(nt * C3, sizeof(float));
        if (!partial) return -1;
    }
#pragma omp parallel num_threads(nt) reduction(| : failed)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        Scratch s;
        if (!scratch_alloc(&s, T, D, dout != NULL)) failed = 1;
        float *mine = partial ? partial + t * C3 : NULL;
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            if (failed) continue;
            if (dout) attention_backward_head(qkv, bias, dout, lse, dqkv, mine, bh / H, bh % H, T, H, D, scale, &s);
            else attention_forward_head(qkv, bias, out, lse, bh / H, bh % H, T, H, D, scale, &s);
        }
        scratch_free(&s);
    }
    if (partial) {
        for (size_t c = 0; c < C3; c++) {
            float acc = 0.f;
            for (int t = 0; t < nt; t++) acc += partial[t * C3 + c];
            dbias[c] = acc;
        }
        free(partial);
    }
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------- bias + GELU
 * Forward when g is NULL: out = GELU(h + b). Backward: out = dh, and db = column sums of dh. Rows are split
 * into one contiguous range per thread; each thread sums its own db, and the partial sums are added in
 * thread order, so db is the same on every run with the same thread count (like PyTorch's reductions). */
static int bias_gelu(const float *g, const float *h, const float *b, float *out, float *db, int64_t M, int N) {
    int nt = max_threads();
    size_t Np = rup(N, W);
    float *partial = NULL;
    if (g) {
        partial = calloc((size_t)nt * Np, sizeof(float));
        if (!partial) return -1;
    }
#pragma omp parallel num_threads(nt)
    {
        int64_t r0, r1;
        int t = thread_range(M, 1, &r0, &r1);
        if (r0 < r1) {
            if (g) bias_gelu_backward_rows(g, h, b, out, partial + (size_t)t * Np, r0, r1, N);
            else bias_gelu_rows(h, b, out, r0, r1, N);
        }
    }
    if (partial) {
        for (int j = 0; j < N; j++) {
            float acc = 0.f;
            for (int t = 0; t < nt; t++) acc += partial[(size_t)t * Np + j];
            db[j] = acc;
        }
        free(partial);
    }
    return 0;
}

/* ------------------------------------------------------------------------------ residual add + LayerNorm
 * Forward (dh NULL): xo = x + y (+ b), h = LayerNorm(xo), mean / rstd per row. Backward: dx = dxo (may be
 * NULL) + LayerNorm's input gradient, and the column sums dgamma, dbeta, db (each may be NULL) -- per-thread
 * partial sums added in thread order, as in bias_gelu. rms: RMSNorm instead of LayerNorm (no mean). */
static int add_layernorm(const float *x, const float *y, const float *b, const float *gamma, const float *beta,
                         float *xo, float *h, float *mean, float *rstd, float eps, const float *dh, const float *dxo,
                         float *dx, float *dgamma, float *dbeta, float *db, int rms, int64_t M, int N) {
    int nt = max_threads();
    size_t Np = rup(N, W);
    float *partial = NULL;
    if (dh) {
        partial = calloc((size_t)nt * 3 * Np, sizeof(float));
        if (!partial) return -1;
    }
#pragma omp parallel num_threads(nt)
    {
        int64_t r0, r1;
        int t = thread_range(M, 1, &r0, &r1);
        if (r0 < r1) {
            if (dh) {
                float *mine = partial + (size_t)t * 3 * Np;
                add_layernorm_backward_rows(dh, dxo, xo, mean, rstd, gamma, dx, dgamma ? mine : NULL,
                                            dbeta ? mine + Np : NULL, db ? mine + 2 * Np : NULL, rms, r0, r1, N);
            } else
                add_layernorm_rows(x, y, b, gamma, beta, xo, h, mean, rstd, eps, rms, r0, r1, N);
        }
    }
    if (partial) {
        float *outs[3] = {dgamma, dbeta, db};
        for (int k = 0; k < 3; k++) {
            if (!outs[k]) continue;
            for (int j = 0; j < N; j++) {
                float acc = 0.f;
                for (int t = 0; t < nt; t++) acc += partial[((size_t)t * 3 + k) * Np + j];
                outs[k][j] = acc;
            }
        }
        free(partial);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------- SwiGLU gate, RoPE
 * Elementwise (silu_mul) and row-wise (rope) passes: each thread takes one contiguous range, nothing is
 * summed across threads, so the results do not depend on the thread count. */
static void silu_mul(const float *d, const float *g, const float *u, float *out, float *dg, float *du, int64_t n) {
#pragma omp parallel
    {
        int64_t i0, i1;
        thread_range(n, W, &i0, &i1);
        if (i0 < i1) {
            if (d) silu_mul_backward_range(d, g, u, dg, du, i0, i1);
            else silu_mul_range(g, u, out, i0, i1);
        }
    }
}

static void rope(const float *src, const float *cos_t, const float *sin_t, float *dst, float sign, int64_t rows, int T,
                 int H, int D) {
#pragma omp parallel
    {
        int64_t r0, r1;
        thread_range(rows, 1, &r0, &r1);
        if (r0 < r1) rope_rows(src, cos_t, sin_t, dst, sign, r0, r1, T, H, D);
    }
}

/* ------------------------------------------------------------------------------------------ cross-entropy
 * Mean cross-entropy of logits (N, V) against targets (N), skipping ignore_index, and -- when grad is not
 * NULL -- its gradient (softmax - onehot) / n_valid, written in the same pass over the logits: PyTorch
 * writes log-probabilities, then in backward zero-fills a one-hot buffer and reads both again. n_valid
 * must be counted first (it scales the gradient): the caller passes it in. Per-thread sums are added in
 * thread order (deterministic for a thread count). Returns 0, -1 (no memory) or -2 (bad target in *bad). */
static int cross_entropy(const float *logits, const int64_t *targets, float *grad, int64_t N, int V,
                         int64_t ignore_index, int64_t n_valid, double *loss, int64_t *bad) {
    int nt = max_threads();
    double *sums = calloc(nt, sizeof(double));
    int64_t *bads = malloc(nt * sizeof(int64_t));
    if (!sums || !bads) { free(sums); free(bads); return -1; }
    for (int t = 0; t < nt; t++) bads[t] = ignore_index;
    float inv_n = n_valid > 0 ? 1.f / (float)n_valid : 0.f;
#pragma omp parallel num_threads(nt)
    {
        int64_t r0, r1;
        int t = thread_range(N, 1, &r0, &r1);
        if (r0 < r1) sums[t] = cross_entropy_rows(logits, targets, grad, r0, r1, V, ignore_index, inv_n, &bads[t]);
    }
    int rc = 0;
    double total = 0.0;
    for (int t = 0; t < nt; t++) {
        total += sums[t];
        if (bads[t] != ignore_index && rc == 0) { *bad = bads[t]; rc = -2; }
    }
    *loss = n_valid > 0 ? total / (double)n_valid : NAN;
    free(sums);
    free(bads);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ dropout
 * out = x * keep / (1 - p) with keep drawn per element from (seed, element index): see dropout_range.
 * Threads take contiguous ranges; the mask does not depend on how the range is split. */
static void dropout(const float *x, float *out, int64_t n, double p, uint64_t seed) {
    uint32_t threshold = p >= 1.0 ? UINT32_MAX : (uint32_t)(p * 4294967296.0);
    float scale = p >= 1.0 ? 0.f : (float)(1.0 / (1.0 - p));
#pragma omp parallel
    {
        int64_t i0, i1;
        thread_range(n, W, &i0, &i1); /* whole vectors per thread */
        if (i0 < i1) dropout_range(x, out, i0, i1, threshold, scale, (uint32_t)seed, (uint32_t)(seed >> 32));
    }
}

/* ------------------------------------------------------------------------------------------ Python glue
 * The functions take raw data pointers (tensor.data_ptr()) and sizes: ops.py is the only caller and
 * checks dtype, device, shape and contiguity before it calls. The GIL is released while they run. */
#define PTR(x) ((float *)(uintptr_t)(x))

static PyObject *py_attention_forward(PyObject *self, PyObject *args) {
    unsigned long long qkv, bias, out, lse;
    int B, T, H, D, rc;
    float scale;
    if (!PyArg_ParseTuple(args, "KKKKiiiif", &qkv, &bias, &out, &lse, &B, &T, &H, &D, &scale)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = attention(PTR(qkv), bias ? PTR(bias) : NULL, NULL, PTR(out), PTR(lse), NULL, NULL, B, T, H, D, scale);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_attention_backward(PyObject *self, PyObject *args) {
    unsigned long long qkv, bias, dout, lse, dqkv, dbias;
    int B, T, H, D, rc;
    float scale;
    if (!PyArg_ParseTuple(args, "KKKKKKiiiif", &qkv, &bias, &dout, &lse, &dqkv, &dbias, &B, &T, &H, &D, &scale))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = attention(PTR(qkv), bias ? PTR(bias) : NULL, PTR(dout), NULL, PTR(lse), PTR(dqkv), dbias ? PTR(dbias) : NULL,
                   B, T, H, D, scale);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_bias_gelu_forward(PyObject *self, PyObject *args) {
    unsigned long long h, b, out;
    long long M;
    int N, rc;
    if (!PyArg_ParseTuple(args, "KKKLi", &h, &b, &out, &M, &N)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = bias_gelu(NULL, PTR(h), PTR(b), PTR(out), NULL, M, N);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_bias_gelu_backward(PyObject *self, PyObject *args) {
    unsigned long long g, h, b, dh, db;
    long long M;
    int N, rc;
    if (!PyArg_ParseTuple(args, "KKKKKLi", &g, &h, &b, &dh, &db, &M, &N)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = bias_gelu(PTR(g), PTR(h), PTR(b), PTR(dh), PTR(db), M, N);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_add_layernorm_forward(PyObject *self, PyObject *args) {
    unsigned long long x, y, b, gamma, beta, xo, h, mean, rstd;
    long long M;
    int N, rms, rc;
    float eps;
    if (!PyArg_ParseTuple(args, "KKKKKKKKKfLip", &x, &y, &b, &gamma, &beta, &xo, &h, &mean, &rstd, &eps, &M, &N, &rms))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = add_layernorm(PTR(x), PTR(y), b ? PTR(b) : NULL, PTR(gamma), beta ? PTR(beta) : NULL, PTR(xo), PTR(h),
                       PTR(mean), PTR(rstd), eps, NULL, NULL, NULL, NULL, NULL, NULL, rms, M, N);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_add_layernorm_backward(PyObject *self, PyObject *args) {
    unsigned long long dh, dxo, xo, mean, rstd, gamma, dx, dgamma, dbeta, db;
    long long M;
    int N, rms, rc;
    if (!PyArg_ParseTuple(args, "KKKKKKKKKKLip", &dh, &dxo, &xo, &mean, &rstd, &gamma, &dx, &dgamma, &dbeta, &db, &M, &N,
                          &rms))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = add_layernorm(NULL, NULL, NULL, PTR(gamma), NULL, PTR(xo), NULL, PTR(mean), PTR(rstd), 0.f, PTR(dh),
                       dxo ? PTR(dxo) : NULL, PTR(dx), dgamma ? PTR(dgamma) : NULL, dbeta ? PTR(dbeta) : NULL,
                       db ? PTR(db) : NULL, rms, M, N);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_cross_entropy(PyObject *self, PyObject *args) {
    unsigned long long logits, targets, grad;
    long long N, ignore_index, n_valid, bad = 0;
    int V, rc;
    double loss = 0.0;
    if (!PyArg_ParseTuple(args, "KKKLiLL", &logits, &targets, &grad, &N, &V, &ignore_index, &n_valid)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = cross_entropy(PTR(logits), (const int64_t *)(uintptr_t)targets, grad ? PTR(grad) : NULL, N, V, ignore_index,
                       n_valid, &loss, (int64_t *)&bad);
    Py_END_ALLOW_THREADS
    if (rc == -1) return PyErr_NoMemory();
    if (rc == -2) return PyErr_Format(PyExc_IndexError, "Target %lld is out of bounds.", bad);
    return PyFloat_FromDouble(loss);
}

static PyObject *py_dropout(PyObject *self, PyObject *args) {
    unsigned long long x, out, seed;
    long long n;
    double p;
    if (!PyArg_ParseTuple(args, "KKLdK", &x, &out, &n, &p, &seed)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    dropout(PTR(x), PTR(out), n, p, seed);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_silu_mul_forward(PyObject *self, PyObject *args) {
    unsigned long long g, u, out;
    long long n;
    if (!PyArg_ParseTuple(args, "KKKL", &g, &u, &out, &n)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    silu_mul(NULL, PTR(g), PTR(u), PTR(out), NULL, NULL, n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_silu_mul_backward(PyObject *self, PyObject *args) {
    unsigned long long d, g, u, dg, du;
    long long n;
    if (!PyArg_ParseTuple(args, "KKKKKL", &d, &g, &u, &dg, &du, &n)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    silu_mul(PTR(d), PTR(g), PTR(u), NULL, PTR(dg), PTR(du), n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_rope(PyObject *self, PyObject *args) {
    unsigned long long src, cos_t, sin_t, dst;
    float sign;
    long long rows;
    int T, H, D;
    if (!PyArg_ParseTuple(args, "KKKKfLiii", &src, &cos_t, &sin_t, &dst, &sign, &rows, &T, &H, &D)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rope(PTR(src), PTR(cos_t), PTR(sin_t), PTR(dst), sign, rows, T, H, D);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"attention_forward", py_attention_forward, METH_VARARGS, "causal attention from packed qkv (see ops.py)"},
    {"attention_backward", py_attention_backward, METH_VARARGS, "its gradient with respect to qkv"},
    {"dropout", py_dropout, METH_VARARGS, "dropout with a mask regenerated from a seed (see ops.py)"},
    {"cross_entropy", py_cross_entropy, METH_VARARGS, "mean cross-entropy and its gradient (see ops.py)"},
    {"bias_gelu_forward", py_bias_gelu_forward, METH_VARARGS, "GELU(h + b) (see ops.py)"},
    {"bias_gelu_backward", py_bias_gelu_backward, METH_VARARGS, "d/dh and d/db of GELU(h + b)"},
    {"add_layernorm_forward", py_add_layernorm_forward, METH_VARARGS, "x + y (+ b), then LayerNorm (see ops.py)"},
    {"add_layernorm_backward", py_add_layernorm_backward, METH_VARARGS, "its gradients"},
    {"silu_mul_forward", py_silu_mul_forward, METH_VARARGS, "silu(g) * u (see ops.py)"},
    {"silu_mul_backward", py_silu_mul_backward, METH_VARARGS, "its gradients with respect to g and u"},
    {"rope", py_rope, METH_VARARGS, "rotary positions on packed qkv (sign -1: backward) (see ops.py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "sifirdan's CPU attention kernel", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    pick_isa();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyModule_AddStringConstant(m, "isa", isa);
#ifdef _OPENMP
    PyModule_AddIntConstant(m, "openmp", 1);
#else
    PyModule_AddIntConstant(m, "openmp", 0);
#endif
    return m;
}
