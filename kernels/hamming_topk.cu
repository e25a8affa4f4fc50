// Hamming top-k of query hashes against all stored hashes (`similar --by phash`).
//
// Semantics are defined by alice_gpu.search.hamming.hamming_topk: the k nearest rows by
// Hamming distance, ties broken by row order. Distances are integers in 0..64, so
// the exact top-k is found in two passes without sorting N items:
//   1. hamming_histogram: per query, a 65-bin histogram of distances (shared-memory
//      atomics per block, one global atomic per bin per block);
//      the host finds the cutoff distance c where the cumulative count reaches k;
//   2. hamming_select: every row with distance <= c is appended (per-block
//      compaction in shared memory, one global atomic per block); the host sorts
//      those few candidates by (distance, row) and keeps k.
// Stored hashes are read with coalesced 16-byte loads (ulonglong2).
//
// Build check (CI, no GPU needed): nvcc -arch=sm_90 -c kernels/hamming_topk.cu

#define THREADS 256
#define BINS 65

// two hashes with one 16-byte load when aligned (the usual case), else two 8-byte loads
__device__ __forceinline__ ulonglong2 load2(const unsigned long long* __restrict__ codes,
                                           const long long c, const long long n)
{
    ulonglong2 v;
    if (c + 1 < n && ((reinterpret_cast<size_t>(codes + c) & 15) == 0)) {
        v = *reinterpret_cast<const ulonglong2*>(codes + c);
    } else {
        v.x = codes[c];
        v.y = (c + 1 < n) ? codes[c + 1] : 0ULL;
    }
    return v;
}

extern "C" __global__ void hamming_histogram(const unsigned long long* __restrict__ codes,
                                             const long long n,
                                             const unsigned long long* __restrict__ queries,
                                             unsigned long long* __restrict__ hist)
{
    // grid: (blocks over n / 2 per thread, queries)
    __shared__ unsigned int local[BINS];
    const int q = blockIdx.y;
    const unsigned long long query = queries[q];
    for (int b = threadIdx.x; b < BINS; b += blockDim.x) local[b] = 0;
    __syncthreads();

    const long long pair = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long c = 2 * pair;
    if (c < n) {
        const ulonglong2 v = load2(codes, c, n);
        atomicAdd(&local[__popcll(query ^ v.x)], 1u);
        if (c + 1 < n) atomicAdd(&local[__popcll(query ^ v.y)], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < BINS; b += blockDim.x) {
        if (local[b]) atomicAdd(&hist[(long long)q * BINS + b], (unsigned long long)local[b]);
    }
}

extern "C" __global__ void hamming_select(const unsigned long long* __restrict__ codes,
                                          const long long n,
                                          const unsigned long long query,
                                          const int cutoff,
                                          long long* __restrict__ out_rows,
                                          unsigned char* __restrict__ out_d,
                                          unsigned long long* __restrict__ out_count,
                                          const unsigned long long capacity)
{
    __shared__ long long rows[2 * THREADS];
    __shared__ unsigned char dists[2 * THREADS];
    __shared__ unsigned int m;
    __shared__ unsigned long long base;
    if (threadIdx.x == 0) m = 0;
    __syncthreads();

    const long long c = 2 * ((long long)blockIdx.x * blockDim.x + threadIdx.x);
    if (c < n) {
        const ulonglong2 v = load2(codes, c, n);
        const int d0 = __popcll(query ^ v.x);
        if (d0 <= cutoff) {
            const unsigned int s = atomicAdd(&m, 1u);
            rows[s] = c;
            dists[s] = (unsigned char)d0;
        }
        if (c + 1 < n) {
            const int d1 = __popcll(query ^ v.y);
            if (d1 <= cutoff) {
                const unsigned int s = atomicAdd(&m, 1u);
                rows[s] = c + 1;
                dists[s] = (unsigned char)d1;
            }
        }
    }
    __syncthreads();
    if (m == 0) return;
    if (threadIdx.x == 0) base = atomicAdd(out_count, (unsigned long long)m);
    __syncthreads();
    for (unsigned int s = threadIdx.x; s < m; s += blockDim.x) {
        const unsigned long long at = base + s;
        if (at < capacity) {
            out_rows[at] = rows[s];
            out_d[at] = dists[s];
        }
    }
}
