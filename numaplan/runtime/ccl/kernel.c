/*
 * numaplan CPU collective: the engine of numaplan.runtime.ccl, in C (its only engine).
 *
 * Compiled at first use with the system C compiler (see kernel.py) and called through
 * ctypes, which releases the GIL for the whole call: a rank that waits for its peers does not
 * block the other Python threads of its process (rank 0 lives in the Disco controller).
 *
 * One call = one collective on one chunk (at most one slot).  Python fills a ccl_ctx once per
 * communicator with the addresses of every rank's control lines and data slots in the
 * shared-memory segments (one segment per NUMA node, see segments.py for the layout).
 *
 * Synchronisation (the argument is written out in __init__.py, "Memory ordering"):
 *   - every call carries a sequence number s (1, 2, ...), the same on every rank;
 *   - a publisher writes its data into slot[s & 1], the call descriptor into line[1 + (s & 1)]
 *     and then the sequence word line[0] = s with a release store;
 *   - a reader spins on line[0] >= s with acquire loads, checks the descriptor (same
 *     collective, size, dtype, op, algorithm), then reads slot[s & 1];
 *   - every rank stores done = s (release) at the end of every call; a root that publishes
 *     without waiting for anyone (broadcast, scatter) first waits for done >= s - 1 of every
 *     rank.  So: a rank that completed call c knows every rank completed call c - 1, and a slot
 *     of parity p written at call s + 2 is never read for call s any more.
 *
 * Waiting: spin with the CPU's pause hint, then sched_yield, then nanosleep with a doubling
 * interval; a deadline (timeout_ns) ends it with CCL_ERR_TIMEOUT naming the peer; every
 * check_ns the abort word and the liveness of the peer (kill(pid, 0) and /proc/<pid>/stat
 * state) are checked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The codes and limits of numaplan/ccl_abi.py (the collective's ABI): keep them equal. */
#define CCL_MAX_RANKS 256
#define CCL_MAX_NODES 64

enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2, DT_I32 = 3, DT_F64 = 4, DT_I64 = 5 };
enum { OP_SUM = 0, OP_PROD = 1, OP_MIN = 2, OP_MAX = 3, OP_AVG = 4 };
enum { ALG_ONE_SHOT = 0, ALG_TWO_SHOT = 1, ALG_HIERARCHICAL = 2 };
enum {
    CCL_OK = 0,
    CCL_ERR_TIMEOUT = 1,
    CCL_ERR_DEAD = 2,
    CCL_ERR_ABORTED = 3,
    CCL_ERR_MISMATCH = 4,
    CCL_ERR_ARG = 5
};

/* Must match Ctx in kernel.py field by field. */
typedef struct {
    int32_t world, rank, n_nodes, my_node, leader, is_leader, n_members, align_elems_unused;
    int32_t members[CCL_MAX_RANKS];     /* ranks of my node other than its leader, sorted */
    int32_t node_leader[CCL_MAX_NODES]; /* leader rank of each node index */
    int32_t node_of[CCL_MAX_RANKS];     /* node index of each rank */
    int32_t inter_rank[CCL_MAX_RANKS];  /* rank q's slots are in another node's segment */
    int32_t remote_rank[CCL_MAX_RANKS]; /* ... in a segment homed on another memory node */
    int32_t inter_node[CCL_MAX_NODES];
    int32_t remote_node[CCL_MAX_NODES];
    int32_t pid_self, pad1;
    uint64_t slot_bytes;
    uint64_t *in_line[CCL_MAX_RANKS];   /* [0] seq, [1] desc of parity 0, [2] desc parity 1 */
    uint64_t *red_line[CCL_MAX_RANKS];  /* [0] seq (two-shot: reduced slice published) */
    uint64_t *done_line[CCL_MAX_RANKS]; /* [0] last completed seq, [1] pid, [2] pid namespace */
    char *in_slot[CCL_MAX_RANKS][2];
    uint64_t *part_line[CCL_MAX_NODES]; /* hierarchical: node partial published */
    uint64_t *fin_line[CCL_MAX_NODES];  /* hierarchical: node result published (in leader slot) */
    char *part_slot[CCL_MAX_NODES][2];
    uint64_t *abort_line; /* [0] rank + 1 of the rank that aborted, 0 = none */
    int64_t timeout_ns, spin_ns, yield_ns, sleep_max_ns, check_ns;
    /* outputs */
    int32_t err_code, err_rank;
    uint64_t err_seen, err_desc;
    uint64_t read_bytes, inter_bytes, remote_bytes, wait_ns;
    /* per-call arguments of the ccl_*_a entry points (one ctypes argument instead of nine:
     * Python packs them with struct.pack_into, ~5x cheaper than ctypes argument conversion) */
    uint64_t args[10];
    uint64_t pidns_self; /* inode of /proc/self/ns/pid: liveness checks only within it */
} ccl_ctx;

/* ---------------------------------------------------------------- atomics, time, waiting */
static inline uint64_t load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t load_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void store_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

uint64_t ccl_load_acquire(const uint64_t *p) { return load_acquire(p); }
void ccl_store_release(uint64_t *p, uint64_t v) { store_release(p, v); }

/* 1 when the process is gone or a zombie; 0 when alive or unknown. */
static int process_dead(int32_t pid)
{
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) != 0)
        return errno == ESRCH;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *rp = strrchr(buf, ')'); /* the command name may contain spaces and parens */
    if (!rp || rp[1] != ' ')
        return 0;
    return rp[2] == 'Z' || rp[2] == 'X';
}

int ccl_process_dead(int32_t pid) { return process_dead(pid); }

static int fail(ccl_ctx *c, int code, int rank, uint64_t seen, uint64_t desc)
{
    c->err_code = code;
    c->err_rank = rank;
    c->err_seen = seen;
    c->err_desc = desc;
    return code;
}

/*
 * Wait until line[i][0] >= seq for every i < n; with check_desc, then compare the descriptor of
 * the call's parity with `desc`.  who[i] is the rank behind line i (for errors and liveness).
 */
static int wait_lines(ccl_ctx *c, uint64_t *const *lines, const int32_t *who, int n, uint64_t seq,
                      int check_desc, uint64_t desc)
{
    int i = 0;
    uint32_t spins = 0;
    int64_t t0 = 0, last_check = 0, sleep_ns = 2000;
    for (;;) {
        while (i < n && load_acquire(lines[i]) >= seq) {
            if (check_desc) {
                uint64_t d = load_relaxed(&lines[i][1 + (seq & 1)]);
                if (d != desc)
                    return fail(c, CCL_ERR_MISMATCH, who[i], load_relaxed(lines[i]), d);
            }
            i++;
        }
        if (i == n)
            break;
        cpu_relax();
        if ((++spins & 31) != 0)
            continue;
        int64_t t = now_ns();
        if (!t0) {
            t0 = last_check = t;
            continue;
        }
        int64_t waited = t - t0;
        if (waited > c->timeout_ns)
            return fail(c, CCL_ERR_TIMEOUT, who[i], load_relaxed(lines[i]), 0);
        if (t - last_check > c->check_ns) {
            last_check = t;
            uint64_t ab = load_acquire(c->abort_line);
            if (ab && (int64_t)ab != (int64_t)c->rank + 1)
                return fail(c, CCL_ERR_ABORTED, (int32_t)(ab - 1), 0, 0);
            int32_t pid = (int32_t)load_relaxed(&c->done_line[who[i]][1]);
            uint64_t ns = load_relaxed(&c->done_line[who[i]][2]);
            /* a pid means something only in the peer's pid namespace: check it only there */
            if (pid != c->pid_self && ns == c->pidns_self && ns != 0 && process_dead(pid))
                return fail(c, CCL_ERR_DEAD, who[i], (uint64_t)pid, 0);
        }
        if (waited < c->spin_ns)
            continue;
        if (waited < c->yield_ns) {
            sched_yield();
            continue;
        }
        struct timespec ts = {0, (long)sleep_ns};
        nanosleep(&ts, NULL);
        sleep_ns = sleep_ns * 2 > c->sleep_max_ns ? c->sleep_max_ns : sleep_ns * 2;
    }
    if (t0)
        c->wait_ns += (uint64_t)(now_ns() - t0);
    return CCL_OK;
}

static inline void publish(uint64_t *line, uint64_t seq, uint64_t desc)
{
    store_relaxed(&line[1 + (seq & 1)], desc);
    store_release(&line[0], seq);
}

static inline void count_read(ccl_ctx *c, size_t nbytes, int inter, int remote)
{
    c->read_bytes += nbytes;
    if (inter)
        c->inter_bytes += nbytes;
    if (remote)
        c->remote_bytes += nbytes;
}

/* ---------------------------------------------------------------- element conversions */
#if defined(__FLT16_MAX__)
typedef _Float16 ccl_f16;
static inline float f16_load(const uint16_t *p)
{
    ccl_f16 h;
    memcpy(&h, p, 2);
    return (float)h;
}
static inline void f16_store(uint16_t *p, float f)
{
    ccl_f16 h = (ccl_f16)f;
    memcpy(p, &h, 2);
}
#else
static inline float f16_load(const uint16_t *p)
{
    uint16_t h = *p;
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000 | (man << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void f16_store(uint16_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    uint16_t h;
    if (((u >> 23) & 0xff) == 0xff) {
        h = (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    } else if (exp >= 31) {
        h = (uint16_t)(sign | 0x7c00);
    } else if (exp <= 0) {
        if (exp < -10) {
            h = (uint16_t)sign;
        } else {
            man |= 0x800000;
            uint32_t shift = (uint32_t)(14 - exp);
            uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1);
            uint32_t hm = man >> shift;
            if (rest > half || (rest == half && (hm & 1)))
                hm++;
            h = (uint16_t)(sign | hm);
        }
    } else {
        uint32_t hm = man >> 13, rest = man & 0x1fff;
        uint32_t v = ((uint32_t)exp << 10) | hm;
        if (rest > 0x1000 || (rest == 0x1000 && (hm & 1)))
            v++;
        h = (uint16_t)(sign | v);
    }
    *p = h;
}
#endif

static inline float bf16_load(const uint16_t *p)
{
    uint32_t u = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void bf16_store(uint16_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        *p = (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    *p = (uint16_t)(u >> 16);
}

/* ---------------------------------------------------------------- reductions */
/*
 * Reductions work on 8 elements at a time in GCC/Clang vector types: every source's 8 elements
 * are loaded, converted to the accumulator type (float for float16/bfloat16/float32, double,
 * int64 for the integers) and combined in registers, then converted back and stored once.
 * float16 uses the F16C conversions when the CPU has them (GCC does not vectorise _Float16
 * conversions by itself), a scalar conversion otherwise. The tail (count % 8) goes through a
 * zero-padded copy. Each group of 8 is fully loaded before it is stored, so dst may alias any
 * source.
 */
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__F16C__) && defined(__AVX__)
#define CCL_HAVE_F16C 1
#endif
#pragma GCC diagnostic ignored "-Wpsabi" /* vector arguments of static inline helpers only */
#pragma GCC diagnostic ignored "-Wpragmas"

#define LANES 8
typedef float vf32 __attribute__((vector_size(32)));
typedef int32_t vi32 __attribute__((vector_size(32)));
typedef uint32_t vu32 __attribute__((vector_size(32)));
typedef uint16_t vu16 __attribute__((vector_size(16)));
typedef double vf64 __attribute__((vector_size(64)));
typedef int64_t vi64 __attribute__((vector_size(64)));

static inline vf32 ld_f32(const float *p) { vf32 v; memcpy(&v, p, sizeof v); return v; }
static inline void st_f32(float *p, vf32 v) { memcpy(p, &v, sizeof v); }
static inline vf64 ld_f64(const double *p) { vf64 v; memcpy(&v, p, sizeof v); return v; }
static inline void st_f64(double *p, vf64 v) { memcpy(p, &v, sizeof v); }
static inline vi64 ld_i64(const int64_t *p) { vi64 v; memcpy(&v, p, sizeof v); return v; }
static inline void st_i64(int64_t *p, vi64 v) { memcpy(p, &v, sizeof v); }
static inline vi64 ld_i32(const int32_t *p)
{
    vi32 v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, vi64);
}
static inline void st_i32(int32_t *p, vi64 v)
{
    vi32 r = __builtin_convertvector(v, vi32); /* keeps the low 32 bits: int32 wrap-around */
    memcpy(p, &r, sizeof r);
}
static inline vf32 ld_f16(const uint16_t *p)
{
#ifdef CCL_HAVE_F16C
    return (vf32)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    vf32 v;
    for (int i = 0; i < LANES; i++)
        v[i] = f16_load(p + i);
    return v;
#endif
}
static inline void st_f16(uint16_t *p, vf32 v)
{
#ifdef CCL_HAVE_F16C
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#else
    for (int i = 0; i < LANES; i++)
        f16_store(p + i, v[i]);
#endif
}
static inline vf32 ld_bf16(const uint16_t *p)
{
#ifdef __AVX2__
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return (vf32)_mm256_slli_epi32(u, 16);
#else
    vu16 h;
    memcpy(&h, p, sizeof h);
    return (vf32)(__builtin_convertvector(h, vu32) << 16);
#endif
}
static inline void st_bf16(uint16_t *p, vf32 v)
{
    vu32 u = (vu32)v;
    vu32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; /* round to nearest even */
    vu32 quiet = (u >> 16) | 0x40u;                          /* NaN stays a (quiet) NaN */
    vu32 isnan = (vu32)((vi32)(u & 0x7fffffffu) > 0x7f800000); /* signed compare: AVX2 has it */
    vu32 r = (rounded & ~isnan) | (quiet & isnan);           /* every lane < 65536 */
#ifdef __AVX2__
    __m256i ri = (__m256i)r;
    __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(ri), _mm256_extracti128_si256(ri, 1));
    _mm_storeu_si128((__m128i *)p, h);
#else
    vu16 h = __builtin_convertvector(r, vu16);
    memcpy(p, &h, sizeof h);
#endif
}

/* Bitwise select for min/max: m is all-ones where `a` is chosen. */
#define VSEL(m, a, b, VT, MT) ((VT)((((MT)(a)) & (m)) | (((MT)(b)) & ~(m))))

#define REDUCE_LOOP(T, VACC, LD, ST, COMBINE, DIVIDE)                                            \
    do {                                                                                       \
        size_t nv = count / LANES * LANES;                                                     \
        for (size_t j = 0; j < nv; j += LANES) {                                               \
            VACC acc = LD((const T *)srcs[0] + j);                                             \
            for (int k = 1; k < nsrc; k++) {                                                   \
                VACC v = LD((const T *)srcs[k] + j);                                           \
                COMBINE;                                                                       \
            }                                                                                  \
            DIVIDE;                                                                            \
            ST(dst + j, acc);                                                                  \
        }                                                                                      \
        if (nv < count) {                                                                      \
            size_t rem = count - nv;                                                           \
            T pad[LANES];                                                                      \
            memset(pad, 0, sizeof pad);                                                        \
            memcpy(pad, (const T *)srcs[0] + nv, rem * sizeof(T));                             \
            VACC acc = LD(pad);                                                                \
            for (int k = 1; k < nsrc; k++) {                                                   \
                memcpy(pad, (const T *)srcs[k] + nv, rem * sizeof(T));                         \
                VACC v = LD(pad);                                                              \
                COMBINE;                                                                       \
            }                                                                                  \
            DIVIDE;                                                                            \
            ST(pad, acc);                                                                      \
            memcpy(dst + nv, pad, rem * sizeof(T));                                            \
        }                                                                                      \
    } while (0)

/*
 * dst[i] = srcs[0][i] op srcs[1][i] op ... (left to right, in the accumulator type); with
 * `final` and OP_AVG the result is divided by `world` (integers: truncated toward zero).
 */
#define DEFINE_REDUCE(NAME, T, VACC, MASK, SACC, LD, ST)                                         \
    static void NAME(void *dst_, const void *const *srcs, int nsrc, size_t count, int op,      \
                     int final, int world)                                                     \
    {                                                                                          \
        T *dst = (T *)dst_;                                                                    \
        const SACC w = (SACC)world;                                                            \
        const int avg = final && op == OP_AVG;                                                 \
        switch (op) {                                                                          \
        case OP_PROD:                                                                          \
            REDUCE_LOOP(T, VACC, LD, ST, acc = acc * v, (void)0);                              \
            break;                                                                             \
        case OP_MIN:                                                                           \
            REDUCE_LOOP(T, VACC, LD, ST, acc = VSEL((MASK)(v < acc), v, acc, VACC, MASK),      \
                        (void)0);                                                              \
            break;                                                                             \
        case OP_MAX:                                                                           \
            REDUCE_LOOP(T, VACC, LD, ST, acc = VSEL((MASK)(v > acc), v, acc, VACC, MASK),      \
                        (void)0);                                                              \
            break;                                                                             \
        default:                                                                               \
            if (avg)                                                                           \
                REDUCE_LOOP(T, VACC, LD, ST, acc = acc + v, acc = acc / w);                    \
            else                                                                               \
                REDUCE_LOOP(T, VACC, LD, ST, acc = acc + v, (void)0);                          \
        }                                                                                      \
    }

DEFINE_REDUCE(reduce_f32, float, vf32, vi32, float, ld_f32, st_f32)
DEFINE_REDUCE(reduce_f64, double, vf64, vi64, double, ld_f64, st_f64)
DEFINE_REDUCE(reduce_f16, uint16_t, vf32, vi32, float, ld_f16, st_f16)
DEFINE_REDUCE(reduce_bf16, uint16_t, vf32, vi32, float, ld_bf16, st_bf16)
DEFINE_REDUCE(reduce_i32, int32_t, vi64, vi64, int64_t, ld_i32, st_i32)
DEFINE_REDUCE(reduce_i64, int64_t, vi64, vi64, int64_t, ld_i64, st_i64)

static size_t dtype_size(int dtype)
{
    switch (dtype) {
    case DT_F16:
    case DT_BF16:
        return 2;
    case DT_F32:
    case DT_I32:
        return 4;
    case DT_F64:
    case DT_I64:
        return 8;
    default:
        return 0;
    }
}

static int reduce(void *dst, const void *const *srcs, int nsrc, size_t count, int dtype, int op,
                  int final, int world)
{
    if (op < OP_SUM || op > OP_AVG)
        return -1;
    switch (dtype) {
    case DT_F32: reduce_f32(dst, srcs, nsrc, count, op, final, world); return 0;
    case DT_F16: reduce_f16(dst, srcs, nsrc, count, op, final, world); return 0;
    case DT_BF16: reduce_bf16(dst, srcs, nsrc, count, op, final, world); return 0;
    case DT_I32: reduce_i32(dst, srcs, nsrc, count, op, final, world); return 0;
    case DT_F64: reduce_f64(dst, srcs, nsrc, count, op, final, world); return 0;
    case DT_I64: reduce_i64(dst, srcs, nsrc, count, op, final, world); return 0;
    default: return -1;
    }
}

/* Local reduction, exposed for tests and benchmarks (same loops as the collectives). */
int ccl_reduce(void *dst, const void *const *srcs, int nsrc, uint64_t count, int dtype, int op,
               int final, int world)
{
    return reduce(dst, srcs, nsrc, (size_t)count, dtype, op, final, world);
}

/* Slice [lo, hi) of rank q in a two-shot over `count` elements (cache-line aligned slices). */
static inline void two_shot_slice(size_t count, size_t esize, int world, int q, size_t *lo,
                                  size_t *hi)
{
    size_t align = esize >= 64 ? 1 : 64 / esize;
    size_t per = (count + (size_t)world - 1) / (size_t)world;
    per = (per + align - 1) / align * align;
    size_t a = per * (size_t)q, b = a + per;
    *lo = a < count ? a : count;
    *hi = b < count ? b : count;
}

static inline void mark_done(ccl_ctx *c, uint64_t seq) { store_release(&c->done_line[c->rank][0], seq); }

/* ---------------------------------------------------------------- all-reduce */
static int allreduce_one_shot(ccl_ctx *c, const void *x, void *out, size_t count, int dtype,
                              int op, uint64_t seq, uint64_t desc)
{
    const int W = c->world, r = c->rank, p = (int)(seq & 1);
    size_t nb = count * dtype_size(dtype);
    uint64_t *lines[CCL_MAX_RANKS];
    int32_t who[CCL_MAX_RANKS];
    const void *srcs[CCL_MAX_RANKS];
    int n = 0;
    memcpy(c->in_slot[r][p], x, nb);
    publish(c->in_line[r], seq, desc);
    for (int q = 0; q < W; q++)
        if (q != r) {
            lines[n] = c->in_line[q];
            who[n++] = q;
        }
    int rc = wait_lines(c, lines, who, n, seq, 1, desc);
    if (rc)
        return rc;
    for (int q = 0; q < W; q++) {
        srcs[q] = q == r ? x : (const void *)c->in_slot[q][p];
        if (q != r)
            count_read(c, nb, c->inter_rank[q], c->remote_rank[q]);
    }
    reduce(out, srcs, W, count, dtype, op, 1, W);
    return CCL_OK;
}

static int allreduce_two_shot(ccl_ctx *c, const void *x, void *out, size_t count, int dtype,
                              int op, uint64_t seq, uint64_t desc)
{
    const int W = c->world, r = c->rank, p = (int)(seq & 1);
    const size_t es = dtype_size(dtype), nb = count * es;
    uint64_t *lines[CCL_MAX_RANKS];
    int32_t who[CCL_MAX_RANKS];
    const void *srcs[CCL_MAX_RANKS];
    int n = 0;
    memcpy(c->in_slot[r][p], x, nb);
    publish(c->in_line[r], seq, desc);
    for (int q = 0; q < W; q++)
        if (q != r) {
            lines[n] = c->in_line[q];
            who[n++] = q;
        }
    int rc = wait_lines(c, lines, who, n, seq, 1, desc);
    if (rc)
        return rc;
    /* reduce-scatter: my slice of every rank's buffer, result written in place in my slot
     * (peers read other slices of my slot in this phase, and this slice only after red) */
    size_t lo, hi;
    two_shot_slice(count, es, W, r, &lo, &hi);
    char *mine = c->in_slot[r][p] + lo * es;
    for (int q = 0; q < W; q++) {
        srcs[q] = q == r ? (const void *)((const char *)x + lo * es)
                         : (const void *)(c->in_slot[q][p] + lo * es);
        if (q != r)
            count_read(c, (hi - lo) * es, c->inter_rank[q], c->remote_rank[q]);
    }
    reduce(mine, srcs, W, hi - lo, dtype, op, 1, W);
    store_release(&c->red_line[r][0], seq);
    memcpy((char *)out + lo * es, mine, (hi - lo) * es);
    /* all-gather of the reduced slices */
    n = 0;
    for (int q = 0; q < W; q++)
        if (q != r) {
            lines[n] = c->red_line[q];
            who[n++] = q;
        }
    rc = wait_lines(c, lines, who, n, seq, 0, 0);
    if (rc)
        return rc;
    for (int q = 0; q < W; q++) {
        if (q == r)
            continue;
        two_shot_slice(count, es, W, q, &lo, &hi);
        memcpy((char *)out + lo * es, c->in_slot[q][p] + lo * es, (hi - lo) * es);
        count_read(c, (hi - lo) * es, c->inter_rank[q], c->remote_rank[q]);
    }
    return CCL_OK;
}

static int allreduce_hierarchical(ccl_ctx *c, const void *x, void *out, size_t count, int dtype,
                                  int op, uint64_t seq, uint64_t desc)
{
    const int W = c->world, r = c->rank, p = (int)(seq & 1), me = c->my_node;
    const size_t nb = count * dtype_size(dtype);
    uint64_t *lines[CCL_MAX_RANKS];
    int32_t who[CCL_MAX_RANKS];
    const void *srcs[CCL_MAX_RANKS];
    int rc;
    if (!c->is_leader) {
        /* member: hand my buffer to the node leader, wait for the node's result */
        memcpy(c->in_slot[r][p], x, nb);
        publish(c->in_line[r], seq, desc);
        lines[0] = c->fin_line[me];
        who[0] = c->leader;
        rc = wait_lines(c, lines, who, 1, seq, 1, desc);
        if (rc)
            return rc;
        memcpy(out, c->in_slot[c->leader][p], nb);
        count_read(c, nb, c->inter_rank[c->leader], c->remote_rank[c->leader]);
        return CCL_OK;
    }
    /* leader: publish the descriptor only (lets a peer that chose another algorithm fail) */
    publish(c->in_line[r], seq, desc);
    for (int i = 0; i < c->n_members; i++) {
        lines[i] = c->in_line[c->members[i]];
        who[i] = c->members[i];
    }
    rc = wait_lines(c, lines, who, c->n_members, seq, 1, desc);
    if (rc)
        return rc;
    srcs[0] = x; /* the leader is the lowest rank of its node: rank order */
    for (int i = 0; i < c->n_members; i++) {
        int q = c->members[i];
        srcs[i + 1] = c->in_slot[q][p];
        count_read(c, nb, c->inter_rank[q], c->remote_rank[q]);
    }
    if (c->n_nodes == 1) {
        reduce(out, srcs, c->n_members + 1, count, dtype, op, 1, W);
    } else {
        char *part = c->part_slot[me][p];
        reduce(part, srcs, c->n_members + 1, count, dtype, op, 0, W);
        publish(c->part_line[me], seq, desc);
        int n = 0;
        for (int k = 0; k < c->n_nodes; k++)
            if (k != me) {
                lines[n] = c->part_line[k];
                who[n++] = c->node_leader[k];
            }
        rc = wait_lines(c, lines, who, n, seq, 1, desc);
        if (rc)
            return rc;
        for (int k = 0; k < c->n_nodes; k++) {
            srcs[k] = c->part_slot[k][p]; /* node order: the same sum on every leader */
            if (k != me)
                count_read(c, nb, c->inter_node[k], c->remote_node[k]);
        }
        reduce(out, srcs, c->n_nodes, count, dtype, op, 1, W);
    }
    if (c->n_members > 0) {
        memcpy(c->in_slot[r][p], out, nb);
        publish(c->fin_line[me], seq, desc);
    }
    return CCL_OK;
}

int ccl_allreduce(ccl_ctx *c, const void *x, void *out, uint64_t count, int dtype, int op,
                  int algo, uint64_t seq, uint64_t desc)
{
    size_t es = dtype_size(dtype);
    if (!es || op < OP_SUM || op > OP_AVG || count * es > c->slot_bytes)
        return fail(c, CCL_ERR_ARG, c->rank, 0, 0);
    int rc;
    switch (algo) {
    case ALG_ONE_SHOT: rc = allreduce_one_shot(c, x, out, (size_t)count, dtype, op, seq, desc); break;
    case ALG_TWO_SHOT: rc = allreduce_two_shot(c, x, out, (size_t)count, dtype, op, seq, desc); break;
    case ALG_HIERARCHICAL:
        rc = allreduce_hierarchical(c, x, out, (size_t)count, dtype, op, seq, desc);
        break;
    default: return fail(c, CCL_ERR_ARG, c->rank, 0, 0);
    }
    if (rc == CCL_OK)
        mark_done(c, seq);
    return rc;
}

/* ---------------------------------------------------------------- broadcast / scatter */
/*
 * Rank 0 publishes src_bytes from src; every rank copies [lo, hi) of what rank 0 published into
 * dst (rank 0 from src directly).  Broadcast: lo = 0, hi = src_bytes.  Scatter: each rank's
 * piece.
 */
int ccl_bcast(ccl_ctx *c, const void *src, uint64_t src_bytes, void *dst, uint64_t lo,
              uint64_t hi, uint64_t seq, uint64_t desc)
{
    const int W = c->world, r = c->rank, p = (int)(seq & 1);
    uint64_t *lines[CCL_MAX_RANKS];
    int32_t who[CCL_MAX_RANKS];
    int rc;
    if (src_bytes > c->slot_bytes || hi < lo || hi > src_bytes)
        return fail(c, CCL_ERR_ARG, r, 0, 0);
    if (r == 0) {
        /* the root waits for nobody else: make sure every rank finished the previous call */
        int n = 0;
        for (int q = 1; q < W; q++) {
            lines[n] = c->done_line[q];
            who[n++] = q;
        }
        rc = wait_lines(c, lines, who, n, seq - 1, 0, 0);
        if (rc)
            return rc;
        memcpy(c->in_slot[0][p], src, (size_t)src_bytes);
        publish(c->in_line[0], seq, desc);
        if (hi > lo && (const char *)dst != (const char *)src + lo)
            memmove(dst, (const char *)src + lo, (size_t)(hi - lo));
    } else {
        lines[0] = c->in_line[0];
        who[0] = 0;
        rc = wait_lines(c, lines, who, 1, seq, 1, desc);
        if (rc)
            return rc;
        if (hi > lo) {
            memcpy(dst, c->in_slot[0][p] + lo, (size_t)(hi - lo));
            count_read(c, (size_t)(hi - lo), c->inter_rank[0], c->remote_rank[0]);
        }
    }
    mark_done(c, seq);
    return CCL_OK;
}

/* ---------------------------------------------------------------- all-gather */
/* out + q * stride receives rank q's nbytes. */
int ccl_allgather(ccl_ctx *c, const void *x, uint64_t nbytes, void *out, uint64_t stride,
                  uint64_t seq, uint64_t desc)
{
    const int W = c->world, r = c->rank, p = (int)(seq & 1);
    uint64_t *lines[CCL_MAX_RANKS];
    int32_t who[CCL_MAX_RANKS];
    int n = 0;
    if (nbytes > c->slot_bytes)
        return fail(c, CCL_ERR_ARG, r, 0, 0);
    memcpy(c->in_slot[r][p], x, (size_t)nbytes);
    publish(c->in_line[r], seq, desc);
    char *mine = (char *)out + (size_t)r * stride;
    if (mine != (const char *)x)
        memmove(mine, x, (size_t)nbytes);
    for (int q = 0; q < W; q++)
        if (q != r) {
            lines[n] = c->in_line[q];
            who[n++] = q;
        }
    int rc = wait_lines(c, lines, who, n, seq, 1, desc);
    if (rc)
        return rc;
    for (int q = 0; q < W; q++) {
        if (q == r)
            continue;
        memcpy((char *)out + (size_t)q * stride, c->in_slot[q][p], (size_t)nbytes);
        count_read(c, (size_t)nbytes, c->inter_rank[q], c->remote_rank[q]);
    }
    mark_done(c, seq);
    return CCL_OK;
}

/* ---------------------------------------------------------------- packed-argument entry points */
int ccl_allreduce_a(ccl_ctx *c)
{
    const uint64_t *a = c->args;
    return ccl_allreduce(c, (const void *)(uintptr_t)a[0], (void *)(uintptr_t)a[1], a[2],
                         (int)a[3], (int)a[4], (int)a[5], a[6], a[7]);
}

int ccl_bcast_a(ccl_ctx *c)
{
    const uint64_t *a = c->args;
    return ccl_bcast(c, (const void *)(uintptr_t)a[0], a[1], (void *)(uintptr_t)a[2], a[3], a[4],
                     a[5], a[6]);
}

int ccl_allgather_a(ccl_ctx *c)
{
    const uint64_t *a = c->args;
    return ccl_allgather(c, (const void *)(uintptr_t)a[0], a[1], (void *)(uintptr_t)a[2], a[3],
                         a[4], a[5]);
}

/* sizeof(ccl_ctx), so Python can check that its mirror matches. */
uint64_t ccl_ctx_size(void) { return sizeof(ccl_ctx); }
