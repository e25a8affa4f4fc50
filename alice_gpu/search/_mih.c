/* Multi-index hashing: every pair of 64-bit codes within `threshold` bits, exactly.
 *
 * The codes are cut into m chunks. If two codes differ in at most t bits, some chunk
 * differs in at most r = t / m bits (pigeonhole), so every pair is found by probing,
 * for each bucket of each chunk, the buckets whose values are within r bits, finds it.
 * Candidates are verified on the whole code. A pair is reported by the first chunk
 * that finds it, so it is reported once. Python (search/mih.py) chooses m from n and t,
 * builds the bucket tables with numpy, splits rows across threads and sorts the pairs.
 *
 * Why C and not numpy: at 1M codes this probes ~5e8 bucket pairs and verifies
 * ~4e9 candidates; numpy's per-call overhead on such small buckets made the same algorithm
 * ~50x slower (benchmarks/RESULTS.md). The functions take plain pointers and are called
 * through ctypes, which releases the GIL, so Python threads run them in parallel.
 * The module init below only exists so setuptools builds a loadable extension.
 */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>
#include <stdint.h>

/* One chunk: join every bucket b with each bucket b ^ mask (mask of <= radius bits, b
   itself included), each unordered pair of buckets once, for b = lo, lo + stride, ...
   Both buckets are contiguous runs of `sorted` (codes by bucket, rows increasing within
   a bucket), so the inner loop is a sequential scan. `earlier` holds the bit masks of
   the chunks before this one: a pair within `radius` on one of them was reported there.
   Returns the number of pairs found, which may exceed `capacity`: then only the first
   `capacity` were written and the caller retries with more room. */
long long mih_join(const uint64_t *sorted, const uint32_t *rows, const uint32_t *off,
                   long long n_buckets, const uint32_t *masks, int n_masks, int threshold,
                   const uint64_t *earlier, int n_earlier, int radius,
                   long long lo, long long stride,
                   int64_t *out_i, int64_t *out_j, uint8_t *out_d, long long capacity)
{
    long long found = 0;
    for (long long b = lo; b < n_buckets; b += stride) {
        const uint32_t s1 = off[b], e1 = off[b + 1];
        if (s1 == e1) continue;
        for (int k = 0; k < n_masks; ++k) {
            const long long b2 = b ^ (long long)masks[k];
            if (b2 < b) continue;                   /* that pair of buckets comes from b2 */
            const uint32_t s2 = off[b2], e2 = off[b2 + 1];
            for (uint32_t p = s1; p < e1; ++p) {
                const uint64_t ci = sorted[p];
                for (uint32_t q = (b2 == b) ? p + 1 : s2; q < e2; ++q) {
                    const uint64_t x = ci ^ sorted[q];
                    const int d = __builtin_popcountll(x);
                    if (d > threshold) continue;
                    int seen = 0;
                    for (int e = 0; e < n_earlier && !seen; ++e)
                        seen = __builtin_popcountll(x & earlier[e]) <= radius;
                    if (seen) continue;
                    if (found < capacity) {
                        const uint32_t a = rows[p], z = rows[q];
                        out_i[found] = a < z ? a : z;
                        out_j[found] = a < z ? z : a;
                        out_d[found] = (uint8_t)d;
                    }
                    ++found;
                }
            }
        }
    }
    return found;
}

/* The bipartite join: rows < split are the base, the others are queries, and only
   base-query pairs are wanted (a query code against the codes it may match). Rows
   increase within a bucket, so each bucket is its base rows then its query rows, and
   mid[b] is where its query rows start: query-query and base-base pairs are never
   looked at. out_i is the base row, out_j the query row; otherwise as mih_join. */
static long long cross_scan(const uint64_t *sorted, const uint32_t *rows,
                            uint32_t s1, uint32_t e1, uint32_t s2, uint32_t e2, int threshold,
                            const uint64_t *earlier, int n_earlier, int radius,
                            int64_t *out_i, int64_t *out_j, uint8_t *out_d,
                            long long found, long long capacity)
{
    for (uint32_t p = s1; p < e1; ++p) {
        const uint64_t ci = sorted[p];
        for (uint32_t q = s2; q < e2; ++q) {
            const uint64_t x = ci ^ sorted[q];
            const int d = __builtin_popcountll(x);
            if (d > threshold) continue;
            int seen = 0;
            for (int e = 0; e < n_earlier && !seen; ++e)
                seen = __builtin_popcountll(x & earlier[e]) <= radius;
            if (seen) continue;
            if (found < capacity) {
                out_i[found] = rows[p];
                out_j[found] = rows[q];
                out_d[found] = (uint8_t)d;
            }
            ++found;
        }
    }
    return found;
}

long long mih_cross(const uint64_t *sorted, const uint32_t *rows, const uint32_t *off,
                    const uint32_t *mid, long long n_buckets, const uint32_t *masks,
                    int n_masks, int threshold, const uint64_t *earlier, int n_earlier,
                    int radius, long long lo, long long stride,
                    int64_t *out_i, int64_t *out_j, uint8_t *out_d, long long capacity)
{
    long long found = 0;
    for (long long b = lo; b < n_buckets; b += stride) {
        if (off[b] == off[b + 1]) continue;
        for (int k = 0; k < n_masks; ++k) {
            const long long b2 = b ^ (long long)masks[k];
            if (b2 < b) continue;                   /* that pair of buckets comes from b2 */
            found = cross_scan(sorted, rows, off[b], mid[b], mid[b2], off[b2 + 1], threshold,
                               earlier, n_earlier, radius, out_i, out_j, out_d, found, capacity);
            if (b2 != b)
                found = cross_scan(sorted, rows, off[b2], mid[b2], mid[b], off[b + 1],
                                   threshold, earlier, n_earlier, radius,
                                   out_i, out_j, out_d, found, capacity);
        }
    }
    return found;
}

static struct PyModuleDef mih_module = {PyModuleDef_HEAD_INIT, "_mih",
                                        "multi-index hashing (called through ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__mih(void) { return PyModule_Create(&mih_module); }
