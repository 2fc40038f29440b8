/* Widen bfloat16-stored float32 weights (the upper 16 bits of each float) into float32.
 *
 * The loader's largest cost after faulting memory in: it writes twice the bytes it reads. With
 * AVX-512 the writes are non-temporal (streaming) stores: the destination is fresh memory far
 * larger than the caches, so ordinary stores would first read every line back (read for
 * ownership) and evict the source. Measured here: 2.2x faster than numpy's left_shift into
 * present memory. Without AVX-512 the plain loop is what the compiler vectorises.
 */
#include <stddef.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static void widen_row(const uint16_t *src, uint32_t *dst, size_t n)
{
    size_t i = 0;
#ifdef __AVX512F__
    /* scalar until the destination is on a 64-byte line, then whole lines streamed */
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++)
        dst[i] = (uint32_t)src[i] << 16;
    for (; i + 16 <= n; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm512_stream_si512((__m512i *)(dst + i),
                            _mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
    }
#endif
    for (; i < n; i++)
        dst[i] = (uint32_t)src[i] << 16;
}

/* rows x cols elements; strides in elements between row starts */
void numaplan_widen_bf16(const uint16_t *src, size_t src_stride, uint32_t *dst,
                         size_t dst_stride, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++)
        widen_row(src + r * src_stride, dst + r * dst_stride, cols);
#ifdef __AVX512F__
    _mm_sfence(); /* streamed stores visible before the caller reads the weights */
#endif
}
