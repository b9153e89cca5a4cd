/* Token-based distances between all pairs of attention heads.

   - Jensen-Shannon (row_entropies, js_pairs): the mixture entropy H((p+q)/2) is the one
     pairwise term that does not factor into matrix products. PyTorch needs an add, a
     log and a dot as three passes over memory plus a dispatch per cache-sized block;
     here it is one pass per element with a vectorizable log, compute-bound.
   - Cosine, Pearson, Bhattacharyya (row_stats, gram_sums): per query, inner products
     of rows scaled per row (weight, 1 / norm, centring; sqrt for Bhattacharyya), summed
     over queries: a Gram matrix per sequence. The scaling is applied while a block of
     queries of all heads is copied into a cache-resident panel, and 4 x 4 tiles of
     heads keep 16 accumulators in registers, over the upper triangle only. A plain
     loop over pairs was bound by cache bandwidth, and PyTorch's formulation (scaled
     copies of the maps, then bmm) by writing those copies.

   Layout: attention a[b][head][q][k] with strides (sb, sh, sq) in floats, keys
   contiguous. Only keys in [kspan[2b], kspan[2b+1]) are read: every real key of
   sequence b lies there, and the rest are padding with probability 0 in every row,
   whose terms are exactly 0. Query rows with weight 0 are skipped by the JS loops;
   in Gram panels rows with scale 0 are zero-filled, so they add nothing.

   Every probability is raised by EPS before its log is taken, in the single-row
   entropies and in the mixtures alike, so log never sees 0 and the two agree on
   identical heads: (x + x) + 2 EPS rounds to exactly 2 (x + EPS).

   Built and loaded by compressor/native/__init__.py (ctypes) with -O3 -fopenmp-simd
   (vectorized loops, no OpenMP runtime): Python threads run disjoint ranges of pairs,
   heads or sequences, with the GIL released during each call. */

#include <stdint.h>
#include <math.h>

#define EPS 1e-30f
#define INV_LN2 1.4426950408889634f

/* Natural log of a positive normal float: Cephes' logf (the polynomial SSE/AVX
   "mathfun" libraries use), written branch-free so it vectorizes; about 1 ulp. */
static inline float log_pos(float x) {
    union { float f; int32_t i; } u = { x };
    float e = (float)(((u.i >> 23) & 0xff) - 126);
    u.i = (u.i & 0x807fffff) | 0x3f000000; /* mantissa in [0.5, 1) */
    float m = u.f;
    int below = m < 0.707106781186547524f;
    e = below ? e - 1.0f : e;
    m = below ? m + m - 1.0f : m - 1.0f;
    float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    return m + y + 0.693359375f * e;
}

/* Entropy in bits of each query row of heads [h0, h1): h[head][b][q] (0 where w = 0). */
void row_entropies(const float *a, int64_t sb, int64_t sh, int64_t sq, int64_t nb, int64_t nq,
                   const int32_t *kspan, const float *w, int64_t h0, int64_t h1, float *h) {
    for (int64_t head = h0; head < h1; head++)
        for (int64_t b = 0; b < nb; b++) {
            const int32_t k0 = kspan[2 * b], k1 = kspan[2 * b + 1];
            for (int64_t q = 0; q < nq; q++) {
                float *out = h + (head * nb + b) * nq + q;
                if (w[b * nq + q] == 0.0f) { *out = 0.0f; continue; }
                const float *x = a + b * sb + head * sh + q * sq;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int32_t c = k0; c < k1; c++) {
                    float v = x[c] + EPS;
                    acc += v * log_pos(v);
                }
                *out = -acc * INV_LN2;
            }
        }
}

#define LANES 16 /* floats per vector: one AVX-512 register, two AVX2 ones */
/* GCC/Clang vector extensions: accumulators that stay in registers on any target. */
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef float vf_unaligned __attribute__((vector_size(4 * LANES), aligned(4), may_alias));

static inline vf load(const float *p) { return *(const vf_unaligned *)p; }

static inline float hsum(vf v) {
    float t = 0.0f;
    for (int l = 0; l < LANES; l++) t += v[l];
    return t;
}

/* Squared norm and mass (sum) of each query row of heads [h0, h1) over the key span:
   sumsq[head][b][q], mass[head][b][q]. One pass where PyTorch needs two reductions. */
void row_stats(const float *a, int64_t sb, int64_t sh, int64_t sq, int64_t nb, int64_t nq, const int32_t *kspan,
               int64_t h0, int64_t h1, float *sumsq, float *mass) {
    for (int64_t head = h0; head < h1; head++)
        for (int64_t b = 0; b < nb; b++) {
            const int32_t k0 = kspan[2 * b], k1 = kspan[2 * b + 1];
            for (int64_t q = 0; q < nq; q++) {
                const float *x = a + b * sb + head * sh + q * sq;
                float s2 = 0.0f, s1 = 0.0f;
#pragma omp simd reduction(+ : s2, s1)
                for (int32_t k = k0; k < k1; k++) {
                    s2 += x[k] * x[k];
                    s1 += x[k];
                }
                sumsq[(head * nb + b) * nq + q] = s2;
                mass[(head * nb + b) * nq + q] = s1;
            }
        }
}

/* For pairs p in [p0, p1) of heads (i, j) = (ii[p], jj[p]) and each sequence b:
   out[p][b] += sum_q w[b][q] * sqrt(JS(x, y)), JS in bits clamped to [0, 1], with x, y
   the rows q of heads i and j and h [head][b][q] their entropies (row_entropies).
   With s = x + y (each raised by EPS), H((x+y)/2) = sum(s)/2 - sum(s log2 s)/2.
   Compute-bound on the log, so a plain loop over pairs: query rows go in blocks of
   ``qblock`` so one head's block stays in cache while the pairs that share it pass. */
void js_pairs(const float *a, int64_t sb, int64_t sh, int64_t sq, int64_t nb, int64_t nq, const int32_t *kspan,
              const float *w, const float *h, const int32_t *ii, const int32_t *jj, int64_t p0, int64_t p1,
              int64_t qblock, double *out) {
    for (int64_t b = 0; b < nb; b++) {
        const int32_t k0 = kspan[2 * b], k1 = kspan[2 * b + 1];
        for (int64_t q0 = 0; q0 < nq; q0 += qblock) {
            const int64_t q1 = q0 + qblock < nq ? q0 + qblock : nq;
            for (int64_t p = p0; p < p1; p++) {
                const int64_t i = ii[p], j = jj[p];
                const float *hi = h + (i * nb + b) * nq, *hj = h + (j * nb + b) * nq;
                double total = 0.0;
                for (int64_t q = q0; q < q1; q++) {
                    const float wq = w[b * nq + q];
                    if (wq == 0.0f) continue;
                    const float *x = a + b * sb + i * sh + q * sq;
                    const float *y = a + b * sb + j * sh + q * sq;
                    float acc = 0.0f, mass = 0.0f;
#pragma omp simd reduction(+ : acc, mass)
                    for (int32_t k = k0; k < k1; k++) {
                        float s = (x[k] + y[k]) + 2.0f * EPS;
                        mass += s;
                        acc += s * log_pos(s);
                    }
                    float js = 0.5f * mass - 0.5f * INV_LN2 * acc - 0.5f * (hi[q] + hj[q]);
                    js = js < 0.0f ? 0.0f : (js > 1.0f ? 1.0f : js);
                    total += (double)wq * sqrtf(js);
                }
                out[p * nb + b] += total;
            }
        }
    }
}

/* g[i][j] += <row i, row j> for head tiles I <= J of 4 x 4 heads (so every j >= i is
   covered; in diagonal tiles both halves are), over a panel [npad][len] of prescaled
   rows, len a multiple of LANES. Each step loads 8 vectors for 16 FMAs, the register
   tiling that keeps a Gram matrix from being bound by cache bandwidth. */
static void gram_panel(const float *panel, int64_t npad, int64_t len, float *g) {
    for (int64_t I = 0; I < npad; I += 4)
        for (int64_t J = I; J < npad; J += 4) {
            const float *x0 = panel + I * len, *x1 = x0 + len, *x2 = x1 + len, *x3 = x2 + len;
            const float *y0 = panel + J * len, *y1 = y0 + len, *y2 = y1 + len, *y3 = y2 + len;
            vf a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
            vf a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};
            for (int64_t c = 0; c < len; c += LANES) {
                const vf u0 = load(x0 + c), u1 = load(x1 + c), u2 = load(x2 + c), u3 = load(x3 + c);
                const vf v0 = load(y0 + c), v1 = load(y1 + c), v2 = load(y2 + c), v3 = load(y3 + c);
                a00 += u0 * v0; a01 += u0 * v1; a02 += u0 * v2; a03 += u0 * v3;
                a10 += u1 * v0; a11 += u1 * v1; a12 += u1 * v2; a13 += u1 * v3;
                a20 += u2 * v0; a21 += u2 * v1; a22 += u2 * v2; a23 += u2 * v3;
                a30 += u3 * v0; a31 += u3 * v1; a32 += u3 * v2; a33 += u3 * v3;
            }
            float *g0 = g + I * npad + J, *g1 = g0 + npad, *g2 = g1 + npad, *g3 = g2 + npad;
            g0[0] += hsum(a00); g0[1] += hsum(a01); g0[2] += hsum(a02); g0[3] += hsum(a03);
            g1[0] += hsum(a10); g1[1] += hsum(a11); g1[2] += hsum(a12); g1[3] += hsum(a13);
            g2[0] += hsum(a20); g2[1] += hsum(a21); g2[2] += hsum(a22); g2[3] += hsum(a23);
            g3[0] += hsum(a30); g3[1] += hsum(a31); g3[2] += hsum(a32); g3[3] += hsum(a33);
        }
}

/* Scaled Gram matrices of every sequence b in [b0, b1), for nm metrics at once:
   outs[m][b][i][j] += sum_q sum_k f_m(x[b,i,q,k]) f_m(x[b,j,q,k]) s_m[i][b][q] s_m[j][b][q]
   for j >= i, with f_m = sqrt when use_sqrt[m], else the identity. The per-row scales
   (e.g. sqrt(w) / |row| for cosine) are applied while a block of ``qblock`` queries of
   all heads is copied into ``panel`` ([npad][qblock][kpad] floats, npad = n rounded up
   to 4, kpad = key span rounded up to LANES; zero padded), so each panel is one dense
   [npad, len] matrix for gram_panel. ``g`` is [nm][npad][npad] floats of scratch.
   Metrics share the copy's source rows while they are in cache. */
void gram_sums(const float *a, int64_t sb, int64_t sh, int64_t sq, int64_t nb, int64_t n, int64_t nq,
               const int32_t *kspan, int64_t nm, const float *const *scales, const int32_t *use_sqrt, int64_t b0,
               int64_t b1, int64_t qblock, float *panel, float *g, double *const *outs) {
    const int64_t npad = (n + 3) / 4 * 4;
    for (int64_t b = b0; b < b1; b++) {
        const int32_t k0 = kspan[2 * b], k1 = kspan[2 * b + 1];
        const int64_t span = k1 > k0 ? k1 - k0 : 0, kpad = (span + LANES - 1) / LANES * LANES;
        if (kpad == 0) continue;
        for (int64_t x = 0; x < nm * npad * npad; x++) g[x] = 0.0f;
        for (int64_t q0 = 0; q0 < nq; q0 += qblock) {
            const int64_t nqb = q0 + qblock < nq ? qblock : nq - q0, len = nqb * kpad;
            for (int64_t m = 0; m < nm; m++) {
                for (int64_t i = 0; i < npad; i++)
                    for (int64_t t = 0; t < nqb; t++) {
                        float *dst = panel + i * len + t * kpad;
                        const float s = i < n ? scales[m][(i * nb + b) * nq + q0 + t] : 0.0f;
                        int64_t k = 0;
                        if (s != 0.0f) {
                            const float *src = a + b * sb + i * sh + (q0 + t) * sq + k0;
                            if (use_sqrt[m]) {
#pragma omp simd
                                for (k = 0; k < span; k++) dst[k] = sqrtf(src[k]) * s;
                            } else {
#pragma omp simd
                                for (k = 0; k < span; k++) dst[k] = src[k] * s;
                            }
                        }
                        for (; k < kpad; k++) dst[k] = 0.0f;
                    }
                gram_panel(panel, npad, len, g + m * npad * npad);
            }
        }
        for (int64_t m = 0; m < nm; m++)
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = i; j < n; j++) outs[m][(b * n + i) * n + j] += g[m * npad * npad + i * npad + j];
    }
}
