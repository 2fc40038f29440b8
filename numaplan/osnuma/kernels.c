/*
 * numaplan measurement kernels, compiled at first use with the system C compiler
 * (cc -O2 -shared -fPIC) and called through ctypes, which releases the GIL during the call so
 * several pinned threads stream memory at once.
 *
 *   numaplan_read   sum a buffer with four independent 16-byte vector accumulators: enough
 *                   loads in flight to saturate a core's share of memory bandwidth (STREAM-style
 *                   read-only traffic; the result is returned so the loop cannot be removed).
 *   numaplan_fill   write every 8-byte word with a non-repeating pattern (first touch of every
 *                   page, and no two pages identical so nothing can deduplicate them).
 *   numaplan_chase  follow a chain of pointers: every load depends on the previous one, so the
 *                   time per step is the memory latency (prefetchers cannot guess a random
 *                   cycle).
 *
 * GCC/Clang vector extensions keep this portable across x86_64 (SSE2) and aarch64 (NEON).
 */
#include <stddef.h>
#include <stdint.h>

typedef uint64_t numaplan_v2u64 __attribute__((vector_size(16)));

uint64_t numaplan_read(const void *buf, size_t nbytes)
{
    const numaplan_v2u64 *v = (const numaplan_v2u64 *)buf;
    size_t lines = nbytes / 64;
    numaplan_v2u64 a0 = {0, 0}, a1 = {0, 0}, a2 = {0, 0}, a3 = {0, 0};
    for (size_t i = 0; i < lines; i++) {
        a0 += v[4 * i];
        a1 += v[4 * i + 1];
        a2 += v[4 * i + 2];
        a3 += v[4 * i + 3];
    }
    numaplan_v2u64 s = a0 + a1 + a2 + a3;
    uint64_t total = s[0] + s[1];
    const uint64_t *w = (const uint64_t *)buf;
    for (size_t i = lines * 8; i < nbytes / 8; i++)
        total += w[i];
    return total;
}

static inline uint64_t numaplan_pattern(uint64_t i)
{
    /* A float64 in [1, 2) whose mantissa is a multiplicative hash of the word index: unique per
     * word, never a NaN or a denormal if someone reads it as doubles. */
    return 0x3FF0000000000000ull | ((i * 0x9E3779B97F4A7C15ull) >> 12);
}

void numaplan_fill(void *buf, size_t nbytes, uint64_t first_word)
{
    uint64_t *w = (uint64_t *)buf;
    size_t n = nbytes / 8;
    for (size_t i = 0; i < n; i++)
        w[i] = numaplan_pattern(first_word + i);
}

void *numaplan_chase(void *start, uint64_t loads)
{
    void **p = (void **)start;
    uint64_t blocks = loads / 8;
    for (uint64_t i = 0; i < blocks; i++) {
        p = (void **)*p; p = (void **)*p; p = (void **)*p; p = (void **)*p;
        p = (void **)*p; p = (void **)*p; p = (void **)*p; p = (void **)*p;
    }
    for (uint64_t i = blocks * 8; i < loads; i++)
        p = (void **)*p;
    return (void *)p;
}
