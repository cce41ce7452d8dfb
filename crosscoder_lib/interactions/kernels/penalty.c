/* The fused C kernel of the interaction penalty (crosscoder_lib.interactions.penalty).

   Built once per machine by crosscoder_lib.interactions.kernels.build into a private cache folder
   and loaded through ctypes; the PyTorch path computes the same sums where it is not available.
   Compiled with -ffp-contract=off so that the products of the two passes over a token's slots are
   bit-identical and "== max" finds the maximal slots exactly. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define SIGN(x) ((x) > 0.0f ? 1.0f : ((x) < 0.0f ? -1.0f : 0.0f))

/* Block l's columns [n0, n1) of the interaction penalty's max term, over every token t:
   s = sum_k |p|, m = max_k |p| with |p[t,k,n]| = vabs[t,k] * |G[idx[t,k], n]| over the token's
   count[t] active slots; out[0] += sum w_n (s - m), out[1] += sum share (m/s, 1 when s = 0).
   With grad_vabs: grad_vabs[t,k] -= sum_n [k maximal] w_n |G[idx,n]| / ties and
   R[h, n] -= sign(G[h, n]) [k maximal] w_n vabs[t,k] / ties (exact ties split evenly). */
int penalty_columns(const float* G, int64_t N, const int64_t* idx, const float* vabs,
                    const int64_t* count, int64_t B, int64_t K, const float* w,
                    int64_t n0, int64_t n1, double* out, float* grad_vabs, float* R)
{
    int64_t W = n1 - n0;
    float* s = (float*)malloc(sizeof(float) * (size_t)W);
    float* m = (float*)malloc(sizeof(float) * (size_t)W);
    int32_t* ties = (int32_t*)malloc(sizeof(int32_t) * (size_t)W);
    int32_t* first = (int32_t*)malloc(sizeof(int32_t) * (size_t)W);
    float* gk = (float*)calloc((size_t)(K > 0 ? K : 1), sizeof(float));
    if (!s || !m || !ties || !first || !gk) { free(s); free(m); free(ties); free(first); free(gk); return 1; }
    double total = 0.0, share = 0.0;
    for (int64_t t = 0; t < B; t++) {
        int64_t c = count[t];
        if (c == 0) { share += (double)W; continue; }
        const int64_t* it = idx + t * K;
        const float* vt = vabs + t * K;
        for (int64_t j = 0; j < W; j++) { s[j] = 0.0f; m[j] = 0.0f; ties[j] = 0; first[j] = 0; }
        if (!grad_vabs) {
            for (int64_t k = 0; k < c; k++) {
                const float* row = G + it[k] * N + n0;
                const float v = vt[k];
                for (int64_t j = 0; j < W; j++) {
                    float x = v * fabsf(row[j]);
                    s[j] += x;
                    m[j] = x > m[j] ? x : m[j];
                }
            }
        } else {  /* also the first maximal slot and the number of maximal slots */
            for (int32_t k = 0; k < (int32_t)c; k++) {
                const float* row = G + it[k] * N + n0;
                const float v = vt[k];
                for (int64_t j = 0; j < W; j++) {
                    float x = v * fabsf(row[j]);
                    int gt = x > m[j], eq = x == m[j];
                    s[j] += x;
                    ties[j] = gt ? 1 : ties[j] + eq;
                    first[j] = gt ? k : first[j];
                    m[j] = gt ? x : m[j];
                }
            }
        }
        for (int64_t j = 0; j < W; j++) {
            float d = s[j] - m[j];
            total += (double)(w ? w[n0 + j] * d : d);
            share += s[j] > 0.0f ? (double)(m[j] / s[j]) : 1.0;
        }
        if (!grad_vabs) continue;
        for (int64_t j = 0; j < W; j++) {
            float cf = (w ? w[n0 + j] : 1.0f) / (float)ties[j];
            if (ties[j] == 1) {
                int32_t k = first[j];
                int64_t at = it[k] * N + n0 + j;
                gk[k] += cf * fabsf(G[at]);
                R[at] -= SIGN(G[at]) * cf * vt[k];
            } else {
                for (int32_t k = 0; k < (int32_t)c; k++) {
                    int64_t at = it[k] * N + n0 + j;
                    if (vt[k] * fabsf(G[at]) == m[j]) { gk[k] += cf * fabsf(G[at]); R[at] -= SIGN(G[at]) * cf * vt[k]; }
                }
            }
        }
        for (int64_t k = 0; k < c; k++) { grad_vabs[t * K + k] -= gk[k]; gk[k] = 0.0f; }
    }
    out[0] += total;
    out[1] += share;
    free(s); free(m); free(ties); free(first); free(gk);
    return 0;
}

/* For rows [h0, h1): r[h] = sum_n w_n |G[h, n]| (w NULL: 1), and R[h, n] = sign(G[h, n]) c[h] w_n, the
   sum term's part of the gradient with respect to G, which penalty_columns then completes; one pass
   over G writes every element of R, so R needs no zeroing. */
void row_sums_and_grad(const float* G, int64_t N, const float* w, const float* c, int64_t h0, int64_t h1,
                       float* r, float* R)
{
    for (int64_t h = h0; h < h1; h++) {
        const float* row = G + h * N;
        float* out = R + h * N;
        const float ch = c[h];
        float acc = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const float wn = w ? w[n] : 1.0f;
            acc += wn * fabsf(row[n]);
            out[n] = SIGN(row[n]) * (ch * wn);
        }
        r[h] = acc;
    }
}
