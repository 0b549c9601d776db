/* Memory bandwidth of this machine, the figures the README's ceilings are computed from:
 * streaming reads and non-temporal (streaming) writes of 1 GiB per thread, 1 and 2 threads,
 * three rounds; then reads of one buffer again and again from one thread, by buffer size,
 * which shows how much of the L3 this process really gets (on a shared host, far less than
 * the die's). Needs AVX-512F.
 *
 *   gcc -O2 -pthread tools/bandwidth.c -o /tmp/bandwidth && /tmp/bandwidth
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N (256UL << 20) /* floats per thread: 1 GiB */
static float *buf[2];
static int writing;
static double sums[2];

/* Sum of n floats; not inlined, and called behind a compiler barrier, so that repeated calls
 * are not merged. */
__attribute__((target("avx512f"), noinline)) float read_sum(const float *p, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_load_ps(p + i));
        s1 = _mm512_add_ps(s1, _mm512_load_ps(p + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_load_ps(p + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_load_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f"))) static void *work(void *arg) {
    long id = (long)arg;
    float *p = buf[id];
    if (!writing) {
        sums[id] = read_sum(p, N);
    } else {
        __m512 v = _mm512_set1_ps(1.0f);
        for (size_t i = 0; i < N; i += 16) _mm512_stream_ps(p + i, v);
        _mm_sfence();
    }
    return 0;
}

int main(void) {
    for (int i = 0; i < 2; i++) {
        buf[i] = aligned_alloc(64, N * 4);
        for (size_t j = 0; j < N; j++) buf[i][j] = 1;
    }
    for (int round = 0; round < 3; round++)
        for (writing = 0; writing < 2; writing++)
            for (long threads = 1; threads <= 2; threads++) {
                pthread_t t[2];
                double start = now();
                for (long i = 0; i < threads; i++) pthread_create(&t[i], 0, work, (void *)i);
                for (long i = 0; i < threads; i++) pthread_join(t[i], 0);
                double s = now() - start;
                printf("%-14s %ld thread%s: %5.1f GB/s (checksum %g)\n",
                       writing ? "stream writes" : "reads", threads, threads > 1 ? "s" : "",
                       threads * N * 4 / s / 1e9, sums[0]);
            }
    /* Cache sizes as this process sees them: the best of five rounds of about 0.5 GB each. */
    size_t mbs[] = {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128};
    for (size_t k = 0; k < sizeof mbs / sizeof mbs[0]; k++) {
        size_t n = mbs[k] << 18;
        double best = 1e9;
        float check = 0;
        for (int round = 0; round < 5; round++) {
            size_t reps = (128UL << 20) / n + 1;
            double start = now();
            for (size_t r = 0; r < reps; r++) {
                check += read_sum(buf[0], n);
                __asm__ volatile("" ::: "memory");
            }
            double s = (now() - start) / reps;
            if (s < best) best = s;
        }
        printf("reads of a %3zu MB buffer, 1 thread: %5.1f GB/s (checksum %g)\n", mbs[k],
               n * 4 / best / 1e9, check);
    }
    return 0;
}
