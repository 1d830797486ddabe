/* sifirdan/kernels/_kernels_impl.h -- the kernels themselves. _kernels.c includes this file once per
 * instruction set (AVX-512, AVX2, generic), each time with SFX(name) giving the copy its own names, so one
 * binary runs everywhere and uses the widest vectors the machine has. Read _kernels.c first.
 *
 * Each copy is written for its own register file (set by _kernels.c before the include):
 *   VW  floats per vector: 16 for AVX-512 (zmm), 8 for AVX2 (ymm). A 16-float vector on an 8-float machine is
 *       lowered lane by lane in places (broadcasts, blends), which made the AVX2 copy slower than PyTorch.
 *   RT  query rows per tile and KBT keys per register block: as many accumulators as the 32 zmm (AVX-512) or
 *       16 ymm (AVX2) registers hold without spilling. */

#define vf SFX(vf)
#define vi SFX(vi)
#define vu SFX(vu)
typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));
#if VW == 16
#define VIOTA ((vf){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
#define VLANES {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
#elif VW == 8
#define VIOTA ((vf){0, 1, 2, 3, 4, 5, 6, 7})
#define VLANES {0, 1, 2, 3, 4, 5, 6, 7}
#else
#error "VW must be 8 or 16"
#endif

#define ld SFX(ld)
#define st SFX(st)
#define bc SFX(bc)
#define sel SFX(sel)
#define hsum SFX(hsum)
#define hmax SFX(hmax)
#define vexp SFX(vexp)
#define st_n SFX(st_n)
#define rows_times_keys SFX(rows_times_keys)
#define attention_forward_head SFX(attention_forward_head)
#define attention_backward_head SFX(attention_backward_head)
#define transpose_head SFX(transpose_head)
#define gather_rows SFX(gather_rows)
#define add_row_bias SFX(add_row_bias)
#define cross_entropy_rows SFX(cross_entropy_rows)
#define mix32 SFX(mix32)
#define dropout_range SFX(dropout_range)
#define gelu_parts SFX(gelu_parts)
#define bias_gelu_rows SFX(bias_gelu_rows)
#define bias_gelu_backward_rows SFX(bias_gelu_backward_rows)
#define add_layernorm_rows SFX(add_layernorm_rows)
#define add_layernorm_backward_rows SFX(add_layernorm_backward_rows)
#define silu_mul_range SFX(silu_mul_range)
#define silu_mul_backward_range SFX(silu_mul_backward_range)
#define rope_rows SFX(rope_rows)
#define vsigmoid SFX(vsigmoid)

static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline void st_n(float *p, vf v, int n) { /* the first n <= VW lanes of v */
    if (n == VW) st(p, v);
    else { float t[VW]; st(t, v); memcpy(p, t, sizeof(float) * n); }
}
#if VW == 16
static inline vf bc(float x) { return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
#else
static inline vf bc(float x) { return (vf){x, x, x, x, x, x, x, x}; }
#endif
static inline vf sel(vi m, vf a, vf b) { /* lane-wise m ? a : b (m: all ones or all zeros) */
    vi ai, bi, r;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    r = (ai & m) | (bi & ~m);
    vf o;
    memcpy(&o, &r, sizeof o);
    return o;
}
/* Horizontal sum / max: halve the vector three times (16 -> 8 -> 4 lanes) instead of 15 dependent scalar
 * steps -- these run once per query row and were a tenth of the forward's time. */
#if VW == 16
static inline float hsum(vf v) {
    v8 a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char *)&v + sizeof a, sizeof b);
    a += b;
#else
static inline float hsum(vf a) {
#endif
    v4 c, d;
    memcpy(&c, &a, sizeof c);
    memcpy(&d, (const char *)&a + sizeof c, sizeof d);
    c += d;
    return (c[0] + c[2]) + (c[1] + c[3]);
}
static inline float hmax(vf v) {
#if VW == 16
    v8 a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char *)&v + sizeof a, sizeof b);
    i8 ma = a > b, ai, bi;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    ai = (ai & ma) | (bi & ~ma);
    memcpy(&a, &ai, sizeof a);
#else
    v8 a = v;
#endif
    float m = a[0];
    for (int l = 1; l < 8; l++) m = a[l] > m ? a[l] : m;
    return m;
}
/* exp(x) for x <= ~88: Cody-Waite range reduction x = k ln2 + r, a degree-6 polynomial for e^r (Cephes'
 * expf coefficients, ~1 ulp), then the result scaled by 2^k. Below -87 (including -inf) it returns exactly 0.
 * The AVX-512 copy rounds with vrndscaleps and scales with vscalefps; the others round by adding 1.5 * 2^23,
 * which leaves k in the low mantissa bits, and build 2^k in the exponent bits. */
static inline vf vexp(vf x) {
#ifdef SIFIRDAN_AVX512
    __m512 xv;
    memcpy(&xv, &x, sizeof xv);
    __mmask16 keep = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(-87.f), _CMP_GE_OQ) |
                     _mm512_cmp_ps_mask(xv, xv, _CMP_UNORD_Q); /* NaN stays NaN */
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf kk, r;
    memcpy(&kk, &k, sizeof kk);
    r = x - kk * 0.693359375f + kk * 2.12194440e-4f;
#else
    vi tiny = x < bc(-87.f);
    x = sel(tiny, bc(-87.f), x);
    vf t = x * 1.44269504088896341f + 12582912.f;
    vf k = t - 12582912.f;
    vi ti;
    memcpy(&ti, &t, sizeof ti);
    vf r = x - k * 0.693359375f + k * 2.12194440e-4f;
#endif
    vf p = bc(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.f;
#ifdef SIFIRDAN_AVX512
    __m512 pv;
    memcpy(&pv, &p, sizeof pv);
    pv = _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(pv, k));
    memcpy(&p, &pv, sizeof p);
    return p;
#else
    vi e = (ti - 0x4B400000 + 127) << 23; /* 0x4B400000: the bits of 1.5 * 2^23 */
    vf two_k;
    memcpy(&two_k, &e, sizeof two_k);
    return sel(tiny, bc(0.f), p * two_k);
#endif
}

/* GELU(x) = x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2, the exact (erf) form of nn.GELU(). erf from
 * Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, the formula PyTorch's CPU GELU uses too); its exp(-z^2)
 * is also GELU's Gaussian density phi(x) = exp(-x^2/2) / sqrt(2 pi), which backward needs. */
static inline void gelu_parts(vf x, vf *cdf, vf *pdf) {
    vf z = x * 0.70710678118654752f;
    vi zi, sign, ai;
    memcpy(&zi, &z, sizeof zi);
    sign = zi & (int32_t)0x80000000;
    ai = zi ^ sign;
    vf az;
    memcpy(&az, &ai, sizeof az); /* |z| */
    vf t = 1.f / (1.f + 0.3275911f * az);
    vf poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
    vf g = vexp(-az * az);
    vf erf_abs = 1.f - poly * g;
    vi ei;
    memcpy(&ei, &erf_abs, sizeof ei);
    ei ^= sign; /* erf is odd */
    vf erf;
    memcpy(&erf, &ei, sizeof erf);
    *cdf = 0.5f + 0.5f * erf;
    *pdf = g * 0.39894228040143268f;
}

/* out = GELU(h + b) for rows row0..row1-1 of h (M, N); N % 16 columns go through a zero-padded buffer */
static void bias_gelu_rows(const float *h, const float *b, float *out, int64_t row0, int64_t row1, int N) {
    for (int64_t i = row0; i < row1; i++) {
        const float *hr = h + i * N;
        float *o = out + i * N;
        int j0 = 0;
        for (; j0 + VW <= N; j0 += VW) {
            vf x = ld(hr + j0) + ld(b + j0), cdf, pdf;
            gelu_parts(x, &cdf, &pdf);
            st(o + j0, x * cdf);
        }
        if (j0 < N) {
            float xt[VW] = {0};
            for (int l = 0; j0 + l < N; l++) xt[l] = hr[j0 + l] + b[j0 + l];
            vf x = ld(xt), cdf, pdf;
            gelu_parts(x, &cdf, &pdf);
            st_n(o + j0, x * cdf, N - j0);
        }
    }
}

/* dh = g * GELU'(h + b) with GELU'(x) = Phi(x) + x phi(x); db (N, padded to 16) += column sums of dh */
static void bias_gelu_backward_rows(const float *g, const float *h, const float *b, float *dh, float *db,
                                    int64_t row0, int64_t row1, int N) {
    for (int64_t i = row0; i < row1; i++) {
        const float *hr = h + i * N, *gr = g + i * N;
        float *o = dh + i * N;
        int j0 = 0;
        for (; j0 + VW <= N; j0 += VW) {
            vf x = ld(hr + j0) + ld(b + j0), cdf, pdf;
            gelu_parts(x, &cdf, &pdf);
            vf d = ld(gr + j0) * (cdf + x * pdf);
            st(o + j0, d);
            st(db + j0, ld(db + j0) + d);
        }
        if (j0 < N) {
            float xt[VW] = {0}, gt[VW] = {0};
            for (int l = 0; j0 + l < N; l++) {
                xt[l] = hr[j0 + l] + b[j0 + l];
                gt[l] = gr[j0 + l];
            }
            vf x = ld(xt), cdf, pdf;
            gelu_parts(x, &cdf, &pdf);
            vf d = ld(gt) * (cdf + x * pdf);
            st_n(o + j0, d, N - j0);
            st(db + j0, ld(db + j0) + d); /* padded lanes add 0 * ... = 0 */
        }
    }
}

/* Residual add + LayerNorm, rows row0..row1-1 of (M, N):
 *   xo = x + y (+ b);  h = (xo - mean) * rstd * gamma (+ beta),  rstd = 1 / sqrt(var + eps)
 * mean and var over the row, var biased (as nn.LayerNorm). mean and rstd are saved for backward.
 * With rms set it is RMSNorm instead (F.rms_norm): mean is taken as 0, so var is the mean square. */
static void add_layernorm_rows(const float *x, const float *y, const float *b, const float *gamma, const float *beta,
                               float *xo, float *h, float *mean, float *rstd, float eps, int rms, int64_t row0,
                               int64_t row1, int N) {
    for (int64_t i = row0; i < row1; i++) {
        const float *xr = x + i * N, *yr = y + i * N;
        float *o = xo + i * N, *hr = h + i * N;
        int j = 0;
        vf sv = bc(0.f);
        for (; j + VW <= N; j += VW) {
            vf v = ld(xr + j) + ld(yr + j);
            if (b) v += ld(b + j);
            st(o + j, v);
            sv += v;
        }
        float sum = hsum(sv);
        for (; j < N; j++) {
            o[j] = xr[j] + yr[j] + (b ? b[j] : 0.f);
            sum += o[j];
        }
        float m = rms ? 0.f : sum / (float)N;
        vf mv = bc(m), qv = bc(0.f); /* second pass for the variance: no cancellation in E[x^2] - m^2 */
        for (j = 0; j + VW <= N; j += VW) {
            vf d = ld(o + j) - mv;
            qv += d * d;
        }
        float sq = hsum(qv);
        for (; j < N; j++) sq += (o[j] - m) * (o[j] - m);
        float r = 1.f / sqrtf(sq / (float)N + eps);
        mean[i] = m;
        rstd[i] = r;
        vf rv = bc(r);
        for (j = 0; j + VW <= N; j += VW) {
            vf v = (ld(o + j) - mv) * rv * ld(gamma + j);
            if (beta) v += ld(beta + j);
            st(hr + j, v);
        }
        for (; j < N; j++) hr[j] = (o[j] - m) * r * gamma[j] + (beta ? beta[j] : 0.f);
    }
}

/* Its backward, rows row0..row1-1. dh: gradient of h; dxo: gradient reaching xo from its other uses (the
 * residual stream), may be NULL. dx = dxo + LayerNorm's input gradient -- the gradient of x, of y, and of b
 * (summed over rows). Per-thread column sums go to dgamma, dbeta and db (each N, padded to 16; NULL = not
 * wanted). With xhat = (xo - mean) rstd and g = dh gamma:
 *   d(LN input) = rstd (g - mean(g) - xhat mean(g xhat)),  dgamma = sum dh xhat,  dbeta = sum dh.
 * RMSNorm (rms set, mean 0) has no mean to subtract, so its input gradient drops the mean(g) term. */
static void add_layernorm_backward_rows(const float *dh, const float *dxo, const float *xo, const float *mean,
                                        const float *rstd, const float *gamma, float *dx, float *dgamma,
                                        float *dbeta, float *db, int rms, int64_t row0, int64_t row1, int N) {
    for (int64_t i = row0; i < row1; i++) {
        const float *dr = dh + i * N, *o = xo + i * N, *gr = dxo ? dxo + i * N : NULL;
        float *out = dx + i * N;
        const float m = mean[i], r = rstd[i];
        const vf mv = bc(m), rv = bc(r);
        vf s1 = bc(0.f), s2 = bc(0.f);
        int j = 0;
        for (; j + VW <= N; j += VW) {
            vf xh = (ld(o + j) - mv) * rv, d = ld(dr + j), g = d * ld(gamma + j);
            s1 += g;
            s2 += g * xh;
            if (dgamma) st(dgamma + j, ld(dgamma + j) + d * xh);
            if (dbeta) st(dbeta + j, ld(dbeta + j) + d);
        }
        float sg = hsum(s1), sgx = hsum(s2);
        for (int k = j; k < N; k++) {
            float xh = (o[k] - m) * r, d = dr[k], g = d * gamma[k];
            sg += g;
            sgx += g * xh;
            if (dgamma) dgamma[k] += d * xh;
            if (dbeta) dbeta[k] += d;
        }
        const float a = rms ? 0.f : sg / (float)N, c = sgx / (float)N;
        const vf av = bc(a), cv = bc(c);
        for (j = 0; j + VW <= N; j += VW) {
            vf xh = (ld(o + j) - mv) * rv;
            vf v = rv * (ld(dr + j) * ld(gamma + j) - av - xh * cv);
            if (gr) v += ld(gr + j);
            st(out + j, v);
            if (db) st(db + j, ld(db + j) + v);
        }
        for (; j < N; j++) {
            float xh = (o[j] - m) * r;
            float v = r * (dr[j] * gamma[j] - a - xh * c) + (gr ? gr[j] : 0.f);
            out[j] = v;
            if (db) db[j] += v;
        }
    }
}

/* sigmoid(x) = 1 / (1 + exp(-x)) from e = exp(-|x|), which never overflows (vexp is only good up to ~88):
 * 1 / (1 + e) for x >= 0, e / (1 + e) below. Saturates to exactly 0 and 1; NaN stays NaN. */
static inline vf vsigmoid(vf x) {
    vi neg = x < bc(0.f);
    vf e = vexp(-sel(neg, -x, x)), r = 1.f / (1.f + e);
    return sel(neg, e * r, r);
}

/* SwiGLU's gate, elementwise over [i0, i1) (whole vectors except at the very end, i1 = n):
 *   out = silu(g) * u = g * sigmoid(g) * u */
static void silu_mul_range(const float *g, const float *u, float *out, int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + VW <= i1; i += VW) {
        vf x = ld(g + i);
        st(out + i, x * vsigmoid(x) * ld(u + i));
    }
    if (i < i1) {
        float gt[VW] = {0}, ut[VW] = {0};
        for (int l = 0; i + l < i1; l++) gt[l] = g[i + l], ut[l] = u[i + l];
        vf x = ld(gt);
        st_n(out + i, x * vsigmoid(x) * ld(ut), (int)(i1 - i));
    }
}

/* Its backward: with s = sigmoid(g),
 *   du = d * silu(g) = d * g * s,   dg = d * u * silu'(g) = d * u * s * (1 + g * (1 - s)). */
static void silu_mul_backward_range(const float *d, const float *g, const float *u, float *dg, float *du,
                                    int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + VW <= i1; i += VW) {
        vf x = ld(g + i), dd = ld(d + i), s = vsigmoid(x);
        st(du + i, dd * x * s);
        st(dg + i, dd * ld(u + i) * s * (1.f + x * (1.f - s)));
    }
    if (i < i1) {
        float gt[VW] = {0}, ut[VW] = {0}, dt[VW] = {0};
        for (int l = 0; i + l < i1; l++) gt[l] = g[i + l], ut[l] = u[i + l], dt[l] = d[i + l];
        vf x = ld(gt), dd = ld(dt), s = vsigmoid(x);
        st_n(du + i, dd * x * s, (int)(i1 - i));
        st_n(dg + i, dd * ld(ut) * s * (1.f + x * (1.f - s)), (int)(i1 - i));
    }
}

/* Rotary positions on packed q | k | v rows (B*T rows of 3 * H * D), rows row0..row1-1; row r is position
 * r % T. Each head's channel pairs (i, i + D/2) of q and of k are rotated by the angle whose cos / sin are
 * row t of the (T, D/2) tables; v is copied. sign = -1 rotates back by the same angle: the backward pass
 * (a rotation's transpose is its inverse), which takes d(out) to d(qkv).
 *   out_i = x_i c - x_{i+D/2} s,   out_{i+D/2} = x_{i+D/2} c + x_i s            (s = sign * sin) */
static void rope_rows(const float *src, const float *cos_t, const float *sin_t, float *dst, float sign,
                      int64_t row0, int64_t row1, int T, int H, int D) {
    const int half = D / 2;
    const size_t C = (size_t)H * D;
    for (int64_t r = row0; r < row1; r++) {
        const float *cr = cos_t + (size_t)(r % T) * half, *sr = sin_t + (size_t)(r % T) * half;
        const float *x = src + (size_t)r * 3 * C;
        float *o = dst + (size_t)r * 3 * C;
        for (int h = 0; h < 2 * H; h++) { /* q's heads, then k's */
            const float *x1 = x + (size_t)h * D, *x2 = x1 + half;
            float *o1 = o + (size_t)h * D, *o2 = o1 + half;
            for (int i = 0; i < half; i++) {
                float c = cr[i], s = sign * sr[i];
                o1[i] = x1[i] * c - x2[i] * s;
                o2[i] = x2[i] * c + x1[i] * s;
            }
        }
        memcpy(o + 2 * C, x + 2 * C, C * sizeof(float));
    }
}

/* dst (D, Tp) = the transpose of a head's T rows of D channels (row stride `stride`): keys or values along the
 * vector lanes. Whole 16 x 16 blocks go through registers (16 loads, 4 rounds of 16 two-vector shuffles,
 * 16 stores: each round swaps the off-diagonal sub-blocks of half the size), the rest element by element.
 * Columns T..Tp-1 of dst stay zero (calloc'd scratch). */
static void transpose_head(const float *src, size_t stride, int T, int D, float *dst, int Tp) {
    int j0 = 0;
#if defined(__GNUC__) && !defined(__clang__)
#if VW == 16
    static const vi lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    static const vi hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    static const vi lo4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    static const vi hi4 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
    static const vi lo2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    static const vi hi2 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    static const vi lo1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    static const vi hi1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
#else
    static const vi lo4 = {0, 1, 2, 3, 8, 9, 10, 11};
    static const vi hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
    static const vi lo2 = {0, 1, 8, 9, 4, 5, 12, 13};
    static const vi hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    static const vi lo1 = {0, 8, 2, 10, 4, 12, 6, 14};
    static const vi hi1 = {1, 9, 3, 11, 5, 13, 7, 15};
#endif
    for (; j0 + VW <= T; j0 += VW) {
        int d0 = 0;
        for (; d0 + VW <= D; d0 += VW) {
            vf r[VW];
            for (int l = 0; l < VW; l++) r[l] = ld(src + (size_t)(j0 + l) * stride + d0);
#define ROUND(h, LO, HI)                                  \
    for (int i = 0; i < VW; i++)                           \
        if (!(i & h)) {                                   \
            vf a = r[i], b = r[i + h];                   \
            r[i] = __builtin_shuffle(a, b, LO);           \
            r[i + h] = __builtin_shuffle(a, b, HI);       \
        }
#if VW == 16
            ROUND(8, lo8, hi8)
#endif
            ROUND(4, lo4, hi4)
            ROUND(2, lo2, hi2)
            ROUND(1, lo1, hi1)
#undef ROUND
            for (int l = 0; l < VW; l++) st(dst + (size_t)(d0 + l) * Tp + j0, r[l]);
        }
        for (int d = d0; d < D; d++)
            for (int j = j0; j < j0 + VW; j++) dst[(size_t)d * Tp + j] = src[(size_t)j * stride + d];
    }
#endif
    for (int d = 0; d < D; d++)
        for (int j = j0; j < T; j++) dst[(size_t)d * Tp + j] = src[(size_t)j * stride + d];
}

/* dst rows (stride Dp) = (src rows + bias) * mul for a head's T rows of D channels (src row stride `stride`);
 * bias may be NULL. Gathering into zero-padded scratch keeps every vector load inside the data. */
static void gather_rows(const float *src, size_t stride, const float *bias, float mul, int T, int D, float *dst,
                        int Dp) {
    for (int j = 0; j < T; j++) {
        const float *row = src + (size_t)j * stride;
        float *o = dst + (size_t)j * Dp;
        int d0 = 0;
        for (; d0 + VW <= D; d0 += VW) st(o + d0, (ld(row + d0) + (bias ? ld(bias + d0) : bc(0.f))) * mul);
        for (int d = d0; d < D; d++) o[d] = (row[d] + (bias ? bias[d] : 0.f)) * mul;
    }
}

/* kt (D rows, stride Tp) += bias[d] on columns 0..T-1 */
static void add_row_bias(float *kt, const float *bias, int T, int D, int Tp) {
    if (!bias) return;
    for (int d = 0; d < D; d++) {
        float *row = kt + (size_t)d * Tp;
        vf b = bc(bias[d]);
        int j = 0;
        for (; j + VW <= T; j += VW) st(row + j, ld(row + j) + b);
        for (; j < T; j++) row[j] += bias[d];
    }
}

/* acc[r][0..1] = sum over keys j < jmax of m[r * ldm + j] * (x[j * ldx], x[j * ldx + VW]): RT rows of a
 * query-by-key matrix (P, or dS) times key rows (V, or K) at one offset of two vectors of channels. Each
 * broadcast of an m element feeds two FMAs. ldm is pointer-sized: no index arithmetic per FMA. */
static inline void rows_times_keys(const float *m, ptrdiff_t ldm, const float *x, size_t ldx, int jmax,
                                   vf acc[RT][2]) {
#pragma GCC unroll 8
    for (int r = 0; r < RT; r++) acc[r][0] = acc[r][1] = bc(0.f);
    for (int j = 0; j < jmax; j++) {
        vf x0 = ld(x + (size_t)j * ldx), x1 = ld(x + (size_t)j * ldx + VW);
        const float *mj = m + j;
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            vf e = bc(mj[r * ldm]);
            acc[r][0] += e * x0;
            acc[r][1] += e * x1;
        }
    }
}

/* One (batch, head) pair, forward. Rows are processed RT at a time; for those rows only the key tiles up
 * to the diagonal are computed (causal: the rest would be masked anyway). Each row's running maximum is
 * kept in a register as the score tiles are made, so softmax reads the scores once. */
static void attention_forward_head(const float *qkv, const float *bias, float *out, float *lse, int b, int h, int T,
                                   int H, int D, float scale, Scratch *s) {
    const int C = H * D, C3 = 3 * C, Tp = rup(T, VW), Dp = rup(D, VW), Dp2 = rup(D, 2 * VW);
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * D;
    const float *bq = bias ? bias + h * D : NULL, *bk = bias ? bias + C + h * D : NULL, *bv = bias ? bias + 2 * C + h * D : NULL;
    gather_rows(base, C3, bq, scale, T, D, s->qs, Dp); /* q + b_q, pre-scaled by 1/sqrt(D) */
    transpose_head(base + C, C3, T, D, s->kt, Tp);     /* k^T: keys along the lanes */
    add_row_bias(s->kt, bk, T, D, Tp);
    gather_rows(base + 2 * C, C3, bv, 1.f, T, D, s->vs, Dp2); /* rows padded to two vectors: see P V below */
    float *pr = s->p; /* RT rows of scores, then probabilities (unnormalised) */
    for (int i0 = 0; i0 < T; i0 += RT) {
        const float *q[RT]; /* query rows (rows past T are zero padding: computed, never stored) */
        for (int r = 0; r < RT; r++) q[r] = s->qs + (size_t)(i0 + r) * Dp;
        int n = rup(i0 + RT, VW) < Tp ? rup(i0 + RT, VW) : Tp; /* keys 0..n-1 cover rows i0..i0+RT-1 */
        vf mx[RT];
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) mx[r] = bc(-INFINITY);
        for (int j0 = 0; j0 < n; j0 += VW) {                /* scores: Q K^T, one 16-key tile at a time */
            vf acc[RT];
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) acc[r] = bc(0.f);
            for (int d = 0; d < D; d++) {
                vf k = ld(s->kt + (size_t)d * Tp + j0);
#pragma GCC unroll 8
                for (int r = 0; r < RT; r++) acc[r] += bc(q[r][d]) * k;
            }
            vf jj = bc((float)j0) + VIOTA;
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                if (j0 + VW > i0) /* the diagonal tile: key j is visible to query i only when j <= i */
                    acc[r] = sel(jj <= bc((float)(i0 + r)), acc[r], bc(-INFINITY));
                mx[r] = sel(acc[r] > mx[r], acc[r], mx[r]);
                st(pr + r * Tp + j0, acc[r]);
            }
        }
        float inv[RT];
        for (int r = 0; r < RT; r++) { /* softmax numerators and 1/denominator, row by row */
            float *row = pr + r * Tp;
            float m = hmax(mx[r]);
            vf sum = bc(0.f), mv = bc(m);
            for (int j0 = 0; j0 < n; j0 += VW) {
                vf e = vexp(ld(row + j0) - mv);
                st(row + j0, e);
                sum += e;
            }
            float l = hsum(sum);
            inv[r] = 1.f / l;
            if (i0 + r < T) lse[((size_t)b * H + h) * T + i0 + r] = m + logf(l);
        }
        int jmax = i0 + RT < T ? i0 + RT : T;
        for (int d0 = 0; d0 < D; d0 += 2 * VW) { /* out = P V, two vectors of channels per broadcast */
            vf acc[RT][2];
            rows_times_keys(pr, Tp, s->vs + d0, Dp2, jmax, acc);
            for (int half = 0; half < 2 && d0 + half * VW < D; half++) {
                int c = d0 + half * VW, width = D - c < VW ? D - c : VW;
                for (int r = 0; r < RT && i0 + r < T; r++) {
                    float *o = out + ((size_t)b * T + i0 + r) * C + (size_t)h * D + c;
                    st_n(o, acc[r][half] * inv[r], width);
                }
            }
        }
    }
}

/* One (batch, head) pair, backward: recompute P from lse, then
 *   dV = P^T dY,  dP = dY V^T,  dS = P * (dP - rowsum(P * dP)),  dQ = scale dS K,  dK = scale dS^T Q.
 * Query rows go in chunks of QC. Pass 1 walks the chunk RT rows at a time: P and dS for those rows (kept for
 * the whole chunk: QC x T floats each), and their dQ. Pass 2 walks the keys KBT at a time: dK and dV sum over
 * the chunk's query rows, so keeping those sums in registers while the rows stream past does each key's
 * read-modify-write once per chunk instead of once per RT rows. Rows of q, k, dY, dK and dV are padded to
 * Dp2 = a multiple of 2 vectors: the dQ, dK and dV loops work on two vectors of channels at a time, so one
 * broadcast of a P or dS element feeds two FMAs. */
static void attention_backward_head(const float *qkv, const float *bias, const float *dout, const float *lse,
                                    float *dqkv, float *dbias, int b, int h, int T, int H, int D, float scale,
                                    Scratch *s) {
    const int C = H * D, C3 = 3 * C, Tp = rup(T, VW), Dp2 = rup(D, 2 * VW);
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * D;
    const float *bq = bias ? bias + h * D : NULL, *bk = bias ? bias + C + h * D : NULL, *bv = bias ? bias + 2 * C + h * D : NULL;
    gather_rows(base, C3, bq, scale, T, D, s->qs, Dp2); /* q + b_q, pre-scaled */
    gather_rows(base + C, C3, bk, 1.f, T, D, s->ks, Dp2);
    transpose_head(base + C, C3, T, D, s->kt, Tp);
    add_row_bias(s->kt, bk, T, D, Tp);
    transpose_head(base + 2 * C, C3, T, D, s->vt, Tp);
    add_row_bias(s->vt, bv, T, D, Tp);
    gather_rows(dout + (size_t)b * T * C + (size_t)h * D, C, NULL, 1.f, T, D, s->dys, Dp2);
    const float *ktp = s->kt, *vtp = s->vt, *ks = s->ks;
    memset(s->dk, 0, sizeof(float) * Tp * Dp2);
    memset(s->dv, 0, sizeof(float) * Tp * Dp2);
    for (int c0 = 0; c0 < T; c0 += QC) {
        const int c1 = c0 + QC < T ? c0 + QC : T;
        /* pass 1: P, dS and dQ, RT query rows at a time */
        for (int i0 = c0; i0 < c1; i0 += RT) {
            float *p = s->p + (size_t)(i0 - c0) * Tp, *ds = s->ds + (size_t)(i0 - c0) * Tp;
            const float *q[RT], *dy[RT];
            float L[RT];
            for (int r = 0; r < RT; r++) { /* padded rows (zeros in scratch) get P = 0 through L = +inf */
                q[r] = s->qs + (size_t)(i0 + r) * Dp2;
                dy[r] = s->dys + (size_t)(i0 + r) * Dp2;
                L[r] = i0 + r < T ? lse[((size_t)b * H + h) * T + i0 + r] : INFINITY;
            }
            int n = rup(i0 + RT, VW) < Tp ? rup(i0 + RT, VW) : Tp;
            vf dot[RT]; /* rowsum(P * dP) = dY_i . Y_i */
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) dot[r] = bc(0.f);
            for (int j0 = 0; j0 < n; j0 += VW) {
                vf as[RT], ap[RT];
#pragma GCC unroll 8
                for (int r = 0; r < RT; r++) as[r] = ap[r] = bc(0.f);
                for (int d = 0; d < D; d++) {
                    vf k = ld(ktp + (size_t)d * Tp + j0), v = ld(vtp + (size_t)d * Tp + j0);
#pragma GCC unroll 8
                    for (int r = 0; r < RT; r++) {
                        as[r] += bc(q[r][d]) * k;
                        ap[r] += bc(dy[r][d]) * v;
                    }
                }
                vf jj = bc((float)j0) + VIOTA;
#pragma GCC unroll 8
                for (int r = 0; r < RT; r++) {
                    vf pv = vexp(as[r] - L[r]); /* q is pre-scaled */
                    if (j0 + VW > i0) pv = sel(jj <= bc((float)(i0 + r)), pv, bc(0.f));
                    st(p + r * Tp + j0, pv);
                    st(ds + r * Tp + j0, ap[r]);
                    dot[r] += pv * ap[r];
                }
            }
            for (int r = 0; r < RT; r++) {
                vf di = bc(hsum(dot[r]));
                for (int j0 = 0; j0 < n; j0 += VW) st(ds + r * Tp + j0, ld(p + r * Tp + j0) * (ld(ds + r * Tp + j0) - di));
            }
            int jmax = i0 + RT < T ? i0 + RT : T;
            for (int d0 = 0; d0 < D; d0 += 2 * VW) { /* dQ rows, two vectors of channels at a time */
                vf dq[RT][2];
                rows_times_keys(ds, Tp, ks + d0, Dp2, jmax, dq);
                for (int half = 0; half < 2 && d0 + half * VW < D; half++) {
                    int c = d0 + half * VW, width = D - c < VW ? D - c : VW;
                    vf dqsum = bc(0.f);
                    for (int r = 0; r < RT && i0 + r < T; r++) {
                        float *o = dqkv + ((size_t)b * T + i0 + r) * C3 + (size_t)h * D + c;
                        vf g = dq[r][half] * scale;
                        dqsum += g;
                        st_n(o, g, width);
                    }
                    if (dbias) { /* padded lanes of dq are 0: k padding is zero */
                        float t[VW];
                        st(t, dqsum);
                        for (int l = 0; l < width; l++) dbias[h * D + c + l] += t[l];
                    }
                }
            }
        }
        /* pass 2: dK = dS^T Q and dV = P^T dY over this chunk's rows, KBT keys at a time. Key j is seen by rows
         * i >= j only; P and dS are zero above the diagonal and were computed up to each row block's last
         * 16-key tile, which covers every key of a block starting at or before the row. */
        for (int j0 = 0; j0 < c1; j0 += KBT) {
            const int i_start = j0 > c0 ? j0 : c0;
            for (int d0 = 0; d0 < D; d0 += 2 * VW) {
                vf dk[KBT][2], dv[KBT][2];
#pragma GCC unroll 4
                for (int kk = 0; kk < KBT; kk++) {
                    dk[kk][0] = ld(s->dk + (size_t)(j0 + kk) * Dp2 + d0);
                    dk[kk][1] = ld(s->dk + (size_t)(j0 + kk) * Dp2 + d0 + VW);
                    dv[kk][0] = ld(s->dv + (size_t)(j0 + kk) * Dp2 + d0);
                    dv[kk][1] = ld(s->dv + (size_t)(j0 + kk) * Dp2 + d0 + VW);
                }
                for (int i = i_start; i < c1; i++) {
                    const float *qi = s->qs + (size_t)i * Dp2 + d0, *gi = s->dys + (size_t)i * Dp2 + d0;
                    vf q0 = ld(qi), q1 = ld(qi + VW), g0 = ld(gi), g1 = ld(gi + VW);
                    const float *pi = s->p + (size_t)(i - c0) * Tp + j0, *dsi = s->ds + (size_t)(i - c0) * Tp + j0;
#pragma GCC unroll 4
                    for (int kk = 0; kk < KBT; kk++) {
                        vf e = bc(dsi[kk]), f = bc(pi[kk]);
                        dk[kk][0] += e * q0;
                        dk[kk][1] += e * q1;
                        dv[kk][0] += f * g0;
                        dv[kk][1] += f * g1;
                    }
                }
#pragma GCC unroll 4
                for (int kk = 0; kk < KBT; kk++) {
                    st(s->dk + (size_t)(j0 + kk) * Dp2 + d0, dk[kk][0]);
                    st(s->dk + (size_t)(j0 + kk) * Dp2 + d0 + VW, dk[kk][1]);
                    st(s->dv + (size_t)(j0 + kk) * Dp2 + d0, dv[kk][0]);
                    st(s->dv + (size_t)(j0 + kk) * Dp2 + d0 + VW, dv[kk][1]);
                }
            }
        }
    }
    for (int d0 = 0; d0 < D; d0 += VW) { /* dK and dV into the packed layout; their column sums are d(bias) */
        int width = D - d0 < VW ? D - d0 : VW;
        vf ksum = bc(0.f), vsum = bc(0.f);
        for (int j = 0; j < T; j++) {
            float *o = dqkv + ((size_t)b * T + j) * C3 + C + (size_t)h * D;
            vf dk = ld(s->dk + (size_t)j * Dp2 + d0), dv = ld(s->dv + (size_t)j * Dp2 + d0);
            ksum += dk;
            vsum += dv;
            st_n(o + d0, dk, width);
            st_n(o + C + d0, dv, width);
        }
        if (dbias) {
            float tk[VW], tv[VW];
            st(tk, ksum);
            st(tv, vsum);
            for (int l = 0; l < width; l++) {
                dbias[C + h * D + d0 + l] += tk[l];
                dbias[2 * C + h * D + d0 + l] += tv[l];
            }
        }
    }
}

/* Cross-entropy rows row0..row1-1 of logits (N, V): returns the sum of (logsumexp(x) - x[target]) over rows
 * whose target is not ignore_index; when grad is not NULL it also writes
 * grad = (softmax(x) - onehot(target)) * inv_n for those rows and zeros for ignored ones. A target outside
 * [0, V) stops the work and is reported through *bad (the caller raises, as F.cross_entropy does). */
static double cross_entropy_rows(const float *logits, const int64_t *targets, float *grad, int64_t row0,
                                 int64_t row1, int V, int64_t ignore_index, float inv_n,
                                 int64_t *bad) {
    double total = 0.0;
    for (int64_t i = row0; i < row1; i++) {
        const float *x = logits + i * V;
        float *gr = grad ? grad + i * V : NULL;
        int64_t t = targets[i];
        if (t == ignore_index) {
            if (gr) memset(gr, 0, sizeof(float) * V);
            continue;
        }
        if (t < 0 || t >= V) {
            *bad = t;
            return total;
        }
        int j = 0;
        vf mv = bc(-INFINITY);
        for (; j + VW <= V; j += VW) {
            vf v = ld(x + j);
            mv = sel(v > mv, v, mv);
        }
        float m = hmax(mv);
        for (; j < V; j++) m = x[j] > m ? x[j] : m;
        vf sv = bc(0.f), mm = bc(m);
        for (j = 0; j + VW <= V; j += VW) sv += vexp(ld(x + j) - mm);
        float sum = hsum(sv);
        for (; j < V; j++) sum += expf(x[j] - m);
        float lse = m + logf(sum);
        total += (double)lse - (double)x[t];
        if (gr) { /* softmax * inv_n = exp(x - lse) * inv_n */
            vf l = bc(lse), sc = bc(inv_n);
            for (j = 0; j + VW <= V; j += VW) st(gr + j, vexp(ld(x + j) - l) * sc);
            for (; j < V; j++) gr[j] = expf(x[j] - lse) * inv_n;
            gr[t] -= inv_n;
        }
    }
    return total;
}

/* Dropout without a stored mask: element i is kept when hash(seed, i) >= p * 2^32, so backward regenerates
 * the same mask from the seed. The hash is two rounds of MurmurHash3's 32-bit finaliser (each output bit
 * depends on every input bit) over the element index mixed with the two halves of a 64-bit seed.
 * out[i] = keep ? x[i] * scale : 0, for i in [i0, i1). */
static inline vu mix32(vu h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static void dropout_range(const float *x, float *out, int64_t i0, int64_t i1, uint32_t threshold, float scale,
                          uint32_t seed_lo, uint32_t seed_hi) {
    int64_t i = i0;
    const vu lane = VLANES;
    for (; i + VW <= i1; i += VW) {
        vu idx = (vu){0} + (uint32_t)i + lane;
        vu h = mix32(mix32(idx ^ seed_lo) ^ seed_hi);
        vi keep = (vi)(h >= threshold);
        vf y = ld(x + i) * scale;
        st(out + i, sel(keep, y, bc(0.f)));
    }
    for (; i < i1; i++) { /* the same hash, one element at a time */
        uint32_t h = (uint32_t)i ^ seed_lo;
        h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
        h ^= seed_hi;
        h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
        out[i] = h >= threshold ? x[i] * scale : 0.f;
    }
}

#undef ld
#undef st
#undef bc
#undef sel
#undef hsum
#undef hmax
#undef vexp
#undef st_n
#undef rows_times_keys
#undef attention_forward_head
#undef attention_backward_head
#undef transpose_head
#undef gelu_parts
#undef bias_gelu_rows
#undef bias_gelu_backward_rows
#undef add_layernorm_rows
#undef add_layernorm_backward_rows
#undef silu_mul_range
#undef silu_mul_backward_range
#undef rope_rows
#undef vsigmoid
#undef cross_entropy_rows
#undef gather_rows
#undef add_row_bias
#undef mix32
#undef dropout_range
#undef vf
#undef vi
#undef vu
#undef VIOTA
#undef VLANES
