/* Exact Jensen-Shannon distances between all pairs of attention heads, fused.

   The mixture entropy H((p+q)/2) is the one pairwise term that does not factor into
   matrix products. In PyTorch it costs an add, a log and a dot as three passes over
   memory plus one dispatch per cache-sized block; here it is one pass per element
   with a vectorizable log, so the work stays in registers.

   Layout: attention a[b][head][q][k] with strides (sb, sh, sq) in floats, keys
   contiguous. Only keys in [kspan[2b], kspan[2b+1]) are read: every real key of
   sequence b lies there, and the rest are padding with probability 0 in every row,
   whose 0 log 0 = 0 terms are exactly what skipping them gives. Query rows with
   weight w = 0 (padding, or queries left out of a sample) are skipped too.

   Every probability is raised by EPS before its log is taken, in the single-row
   entropies and in the mixtures alike, so log never sees 0 and the two agree on
   identical heads: (x + x) + 2 EPS rounds to exactly 2 (x + EPS).

   Built and loaded by compressor/native/__init__.py (ctypes); compiled with
   -O3 -fopenmp-simd so the inner loops become SIMD code. No OpenMP runtime is used:
   Python threads run disjoint pair ranges (ctypes releases the GIL). */

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

/* For pairs p in [p0, p1) of heads (ii[p], jj[p]):
   out[p][b] += sum_q w[b][q] * sqrt(JS(row q of head ii[p], row q of head jj[p])),
   JS in bits, clamped to [0, 1]. With s = p + q (each raised by EPS),
   H((p+q)/2) = sum(s)/2 - sum(s log2 s)/2. Query rows go in blocks of ``qblock``
   so one head's block stays in L1 while the pairs that share it stream past. */
void js_pairs(const float *a, int64_t sb, int64_t sh, int64_t sq, int64_t nb, int64_t nq,
              const int32_t *kspan, const float *w, const float *h, const int32_t *ii,
              const int32_t *jj, int64_t p0, int64_t p1, int64_t qblock, double *out) {
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
                    for (int32_t c = k0; c < k1; c++) {
                        float s = (x[c] + y[c]) + 2.0f * EPS;
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
