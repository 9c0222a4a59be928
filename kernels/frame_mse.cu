// Frame-difference MSE on the GPU: the CUDA twin of qclip_engine/video/frame_mse.py.
//
// For uint8 frames v_0 … v_{T-1} of N = H·W·C bytes each (C = 3 for RGB):
//     pair_sums[t-1] = Σ (v_t − v_{t−1})²                       (frame_mse_pair_sums)
//     m_t = ½ (pair_sums[t-1] + pair_sums[t]) / N, edges use their single neighbour,
//     T = 1 gives m = [0]                                        (frame_mse_finalize)
//
// Memory access pattern (frame_mse_pair_sums)
// -------------------------------------------
// The grid tiles ONE frame: block b owns the bytes [b·S, (b+1)·S) of every frame
// (S = bytes per block) and walks the frames in time order t = 0 … T−1.  Each thread
// keeps the bytes it owns of the previous frame in registers, so every byte of the
// input is read from global memory exactly once (no halo, no re-read of v_{t−1}):
// the pass is a single stream over T·N bytes, bandwidth bound.
//   * Fast path (vectorised = 1; the launcher checks that the base pointer is 16-byte
//     aligned and N % 16 == 0, so every frame starts on a 16-byte boundary): each
//     thread owns one 16-byte uint4 per frame; a warp reads 512 contiguous bytes per
//     frame in one coalesced 128-bit load per thread.
//   * General path (vectorised = 0, e.g. 17×9×3 = 459 bytes per frame): each thread
//     owns 4 bytes per frame at stride blockDim.x (so a warp reads 32 contiguous bytes
//     per load), packs them into one 32-bit word and shares the arithmetic below.
//     Bytes past the end of the frame (tail of the last block) load as 0 in every
//     frame, so they add nothing.
// One frame per step would leave few bytes in flight (a block walks time serially), so
// the loop loads FRAMES_PER_STEP frames ahead into registers before using them; the
// loads are independent and overlap.  Loads use the streaming cache hint (__ldcs):
// each byte is touched once, there is nothing to keep in L1/L2.
//
// Exactness
// ---------
// Everything is integer: |a − b| per byte (__vabsdiffu4), squares summed 4 bytes at a
// time (__dp4a), per-thread sums in 32-bit unsigned, warp-shuffle then shared-memory
// reduction, and one 64-bit atomicAdd per block and pair.  Integer addition is
// associative, so the sums are exact and deterministic regardless of block scheduling
// or atomic order, and equal to the CPU reference's int64 sums.  The finalize kernel
// then does the same float64 operations as the reference (sum / N, ½(a + b), round to
// float32), so the result matches it bit for bit.

#define FRAME_MSE_MAX_THREADS 256   // the launcher's block size: ≤ this, a multiple of 32
#define FRAME_MSE_FRAMES_PER_STEP 8 // frames loaded ahead per step of the time loop
#define FRAME_MSE_WARP 32

// 32-bit overflow guard: a thread adds at most 16 bytes per pair, each (a − b)² ≤ 255² =
// 65025; the largest 32-bit partial sum is a whole block's (before the 64-bit atomic).
static_assert(65025ull * 16ull * FRAME_MSE_MAX_THREADS < (1ull << 32),
              "per-block 32-bit partial sums could overflow");

// Σ over the 4 bytes of (a_i − b_i)², exact: |a_i − b_i| ≤ 255 fits a byte, dp4a squares
// and sums the 4 bytes as unsigned 8-bit × 8-bit products into 32 bits.
__device__ __forceinline__ unsigned int sq_diff(unsigned int a, unsigned int b) {
    const unsigned int d = __vabsdiffu4(a, b);
    return __dp4a(d, d, 0u);
}

__device__ __forceinline__ unsigned int sq_diff(uint4 a, uint4 b) {
    return sq_diff(a.x, b.x) + sq_diff(a.y, b.y) + sq_diff(a.z, b.z) + sq_diff(a.w, b.w);
}

// This thread's 16 bytes of frame t (one uint4 per thread, consecutive threads →
// consecutive 16-byte vectors).
struct VecLoader {
    const uint4* frames;
    unsigned long long vecs_per_frame;
    unsigned long long idx;  // this thread's vector within a frame
    bool active;

    __device__ VecLoader(const unsigned char* base, unsigned long long bytes_per_frame)
        : frames(reinterpret_cast<const uint4*>(base)),
          vecs_per_frame(bytes_per_frame / 16),
          idx((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x) {
        active = idx < vecs_per_frame;
    }

    __device__ __forceinline__ uint4 load(unsigned int t) const {
        if (!active) return make_uint4(0u, 0u, 0u, 0u);
        return __ldcs(frames + (unsigned long long)t * vecs_per_frame + idx);
    }
};

// This thread's 4 bytes of frame t, at byte offsets first + k·blockDim.x (k = 0…3) so
// that each of the 4 loads is coalesced across the warp; packed into one word.
struct ByteLoader {
    const unsigned char* frames;
    unsigned long long bytes_per_frame;
    unsigned long long first;  // this thread's first byte within a frame

    __device__ ByteLoader(const unsigned char* base, unsigned long long n)
        : frames(base),
          bytes_per_frame(n),
          first((unsigned long long)blockIdx.x * blockDim.x * 4 + threadIdx.x) {}

    __device__ __forceinline__ unsigned int load(unsigned int t) const {
        const unsigned char* frame = frames + (unsigned long long)t * bytes_per_frame;
        unsigned int word = 0u;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const unsigned long long off = first + (unsigned long long)k * blockDim.x;
            if (off < bytes_per_frame) word |= (unsigned int)__ldcs(frame + off) << (8 * k);
        }
        return word;
    }
};

template <typename Unit, typename Loader>
__device__ __forceinline__ void pair_sums_body(const Loader& loader,
                                               unsigned long long* __restrict__ pair_sums,
                                               unsigned int num_frames) {
    constexpr int K = FRAME_MSE_FRAMES_PER_STEP;
    // Per step: one 32-bit partial per (pair, warp); at most MAX_THREADS / 32 warps.
    __shared__ unsigned int warp_sums[K][FRAME_MSE_MAX_THREADS / FRAME_MSE_WARP];

    const unsigned int lane = threadIdx.x % FRAME_MSE_WARP;
    const unsigned int warp = threadIdx.x / FRAME_MSE_WARP;
    const unsigned int num_warps = blockDim.x / FRAME_MSE_WARP;

    Unit prev = loader.load(0);
    // Every thread runs the same iterations (bounds depend on num_frames only), so the
    // full-mask shuffles and the __syncthreads below are reached uniformly.
    for (unsigned int t0 = 1; t0 < num_frames; t0 += K) {
        const int n = (int)min((unsigned int)K, num_frames - t0);  // pairs this step

        Unit cur[K];
#pragma unroll
        for (int k = 0; k < K; ++k)  // issue all loads first: K independent loads in flight
            if (k < n) cur[k] = loader.load(t0 + k);

        unsigned int sums[K];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            unsigned int s = 0u;
            if (k < n) {
                s = sq_diff(cur[k], prev);  // pair (t0 + k − 1, t0 + k)
                prev = cur[k];              // the register copy the next pair needs
            }
#pragma unroll
            for (int offset = FRAME_MSE_WARP / 2; offset > 0; offset /= 2)
                s += __shfl_down_sync(0xffffffffu, s, offset);
            sums[k] = s;
        }
        if (lane == 0) {
#pragma unroll
            for (int k = 0; k < K; ++k) warp_sums[k][warp] = sums[k];
        }
        __syncthreads();
        if (threadIdx.x < (unsigned int)n) {  // thread k adds the block's total of pair t0 + k − 1
            unsigned int total = 0u;
            for (unsigned int w = 0; w < num_warps; ++w) total += warp_sums[threadIdx.x][w];
            atomicAdd(pair_sums + (t0 - 1 + threadIdx.x), (unsigned long long)total);
        }
        __syncthreads();  // warp_sums is rewritten next step
    }
}

// pair_sums[T − 1] must be zeroed before the launch (the blocks atomically add into it).
// Launch: 1-D blocks, blockDim.x a multiple of 32 and ≤ FRAME_MSE_MAX_THREADS;
// gridDim.x = ceil(bytes_per_frame / (16 · blockDim.x)) when vectorised, else
// ceil(bytes_per_frame / (4 · blockDim.x)).
extern "C" __global__ void __launch_bounds__(FRAME_MSE_MAX_THREADS)
frame_mse_pair_sums(const unsigned char* __restrict__ frames,
                    unsigned long long* __restrict__ pair_sums,
                    unsigned int num_frames,
                    unsigned long long bytes_per_frame,
                    int vectorised) {
    if (vectorised)
        pair_sums_body<uint4>(VecLoader(frames, bytes_per_frame), pair_sums, num_frames);
    else
        pair_sums_body<unsigned int>(ByteLoader(frames, bytes_per_frame), pair_sums, num_frames);
}

// m[T] from the T − 1 exact pair sums, with the reference's float64 operations:
// pair = sum / N; m_t = ½ (pair_{t−1} + pair_t); edges take their one pair; T = 1 → 0.
extern "C" __global__ void frame_mse_finalize(const unsigned long long* __restrict__ pair_sums,
                                              float* __restrict__ m,
                                              unsigned int num_frames,
                                              unsigned long long bytes_per_frame) {
    const unsigned int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= num_frames) return;
    if (num_frames == 1) {
        m[0] = 0.0f;
        return;
    }
    const double n = (double)bytes_per_frame;
    double value;
    if (t == 0) {
        value = (double)pair_sums[0] / n;
    } else if (t == num_frames - 1) {
        value = (double)pair_sums[t - 1] / n;
    } else {
        value = 0.5 * ((double)pair_sums[t - 1] / n + (double)pair_sums[t] / n);
    }
    m[t] = __double2float_rn(value);
}
