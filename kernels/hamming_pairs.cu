// Hamming range search over packed 64-bit hashes: every pair (i < j) with
// popcount(codes[i] ^ codes[j]) <= threshold. Used by `alice-gpu duplicates`.
//
// Semantics are defined by alice_gpu.search.hamming.hamming_pairs (numpy / FAISS); the
// host wrapper sorts the output by (i, j), so the order of appends here is free.
//
// Layout (Hopper-minded): a block owns TILE rows i and walks column tiles j >= i.
// Each column tile is staged in shared memory with coalesced 16-byte loads
// (ulonglong2 = two hashes per load); each thread keeps its row hash in a
// register and compares it against the whole tile with __popcll. Matches go to
// a per-block buffer in shared memory (shared atomic counter), which is flushed
// to global memory with ONE global atomicAdd per flush: output is compacted per
// block rather than per match.
//
// Build check (CI, no GPU needed): nvcc -arch=sm_90 -c kernels/hamming_pairs.cu

#define TILE 256          // threads per block = rows per block = columns per tile
#define BUF 2048          // matches buffered per block and tile (more go straight to global)

extern "C" __global__ void hamming_pairs(const unsigned long long* __restrict__ codes,
                                         const long long n,
                                         const int threshold,
                                         int* __restrict__ out_i,
                                         int* __restrict__ out_j,
                                         unsigned char* __restrict__ out_d,
                                         unsigned long long* __restrict__ out_count,
                                         const unsigned long long capacity)
{
    __shared__ __align__(16) unsigned long long tile[TILE];
    __shared__ int buf_i[BUF];
    __shared__ int buf_j[BUF];
    __shared__ unsigned char buf_d[BUF];
    __shared__ unsigned int buf_n;
    __shared__ unsigned long long base;

    const long long row0 = (long long)blockIdx.x * TILE;
    const long long i = row0 + threadIdx.x;
    const unsigned long long mine = (i < n) ? codes[i] : 0ULL;

    if (threadIdx.x == 0) buf_n = 0;
    __syncthreads();

    for (long long col0 = row0; col0 < n; col0 += TILE) {
        // coalesced 16-byte loads: threads 0..TILE/2-1 each bring two hashes
        if (threadIdx.x < TILE / 2) {
            const long long c = col0 + 2 * threadIdx.x;
            ulonglong2 v;
            if (c + 1 < n && ((reinterpret_cast<size_t>(codes + c) & 15) == 0)) {
                v = *reinterpret_cast<const ulonglong2*>(codes + c);
            } else {
                v.x = (c < n) ? codes[c] : 0ULL;
                v.y = (c + 1 < n) ? codes[c + 1] : 0ULL;
            }
            tile[2 * threadIdx.x] = v.x;
            tile[2 * threadIdx.x + 1] = v.y;
        }
        __syncthreads();

        if (i < n) {
            const int limit = (int)min((long long)TILE, n - col0);
            for (int t = 0; t < limit; ++t) {
                const long long j = col0 + t;
                if (j <= i) continue;
                const int d = __popcll(mine ^ tile[t]);
                if (d <= threshold) {
                    const unsigned int slot = atomicAdd(&buf_n, 1u);
                    if (slot < BUF) {
                        buf_i[slot] = (int)i;
                        buf_j[slot] = (int)j;
                        buf_d[slot] = (unsigned char)d;
                    } else {
                        // buffer full (a tile of near-identical hashes): append directly
                        const unsigned long long at = atomicAdd(out_count, 1ULL);
                        if (at < capacity) {
                            out_i[at] = (int)i;
                            out_j[at] = (int)j;
                            out_d[at] = (unsigned char)d;
                        }
                    }
                }
            }
        }
        __syncthreads();

        // flush this tile's matches: one global atomic per block and tile
        const unsigned int m = min(buf_n, (unsigned int)BUF);
        if (m > 0) {
            if (threadIdx.x == 0) base = atomicAdd(out_count, (unsigned long long)m);
            __syncthreads();
            for (unsigned int s2 = threadIdx.x; s2 < m; s2 += TILE) {
                const unsigned long long at = base + s2;
                if (at < capacity) {
                    out_i[at] = buf_i[s2];
                    out_j[at] = buf_j[s2];
                    out_d[at] = buf_d[s2];
                }
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) buf_n = 0;
        __syncthreads();
    }
}
