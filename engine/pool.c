/* pool.c: the engine's one pool of worker threads, shared by every kernel that
 * is not a matrix product (OpenBLAS threads those itself).
 *
 * diffuse_parallel_for splits [0, n) into as many contiguous, equal parts as
 * there are threads (fewer when the work is small) and runs them at once, the
 * caller taking the first. The split depends only on n and the thread count,
 * and kernels only ever split independent work (rows, channels, groups), never
 * a sum, so a result is the same bit for bit whatever the thread count.
 *
 * Workers wait on a condition variable between jobs; the caller wakes them by
 * bumping a generation counter and waits for the last one to finish. Calls are
 * not reentrant: a kernel running inside the pool runs its own inner loops
 * serially (diffuse_parallel_for from a worker runs the whole range inline).
 * A child made by fork() starts with an empty pool.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include <cblas.h>

#include "internal.h"

#define POOL_MAX 64

typedef struct pool_job {
    void (*fn)(void *ctx, size_t begin, size_t end);
    void *ctx;
    size_t n;
    int parts;
} pool_job;

static struct {
    pthread_mutex_t call; /* one job at a time, whichever thread asks */
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    pthread_t tid[POOL_MAX];
    int started;              /* worker threads running (threads - 1 at most) */
    int threads;              /* wanted: caller + workers */
    unsigned long generation; /* bumped for every job */
    int pending;              /* parts of the current job not finished */
    pool_job job;
} pool = {.call = PTHREAD_MUTEX_INITIALIZER,
          .lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

static _Thread_local bool in_pool; /* set in workers and in a caller running a job */

static void run_part(const pool_job *j, int part)
{
    size_t b = j->n * (size_t)part / (size_t)j->parts,
           e = j->n * (size_t)(part + 1) / (size_t)j->parts;
    if (b < e)
        j->fn(j->ctx, b, e);
}

static void *worker(void *arg)
{
    const int id = (int)(intptr_t)arg; /* 1.. */
    unsigned long seen = 0;
    in_pool = true;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (pool.generation == seen)
            pthread_cond_wait(&pool.wake, &pool.lock);
        seen = pool.generation;
        pool_job j = pool.job;
        if (id >= j.parts)
            continue;
        pthread_mutex_unlock(&pool.lock);
        run_part(&j, id);
        pthread_mutex_lock(&pool.lock);
        if (--pool.pending == 0)
            pthread_cond_signal(&pool.done);
    }
    return NULL;
}

/* fork(): the child has only the forking thread, so it starts with no
 * workers (they are started again on first need); the pool's locks are held
 * across the fork so the child gets them in a known state. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&pool.call);
    pthread_mutex_lock(&pool.lock);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.call);
}

static void fork_child(void)
{
    pthread_mutex_init(&pool.call, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.started = 0;
    pool.pending = 0;
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void register_fork(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int diffuse_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > POOL_MAX ? POOL_MAX : (int)n;
}

void diffuse_pool_set_threads(int threads)
{
    openblas_set_num_threads(1);
    if (threads <= 0)
        threads = diffuse_cpu_count();
    if (threads > POOL_MAX)
        threads = POOL_MAX;
    pthread_mutex_lock(&pool.lock);
    pool.threads = threads;
    pthread_mutex_unlock(&pool.lock);
}

int diffuse_pool_threads(void)
{
    pthread_mutex_lock(&pool.lock);
    if (!pool.threads) {
        pool.threads = diffuse_cpu_count();
        openblas_set_num_threads(1);
    }
    int t = pool.threads;
    pthread_mutex_unlock(&pool.lock);
    return t;
}

void diffuse_parallel_for(size_t n, size_t grain, void (*fn)(void *ctx, size_t begin, size_t end),
                          void *ctx)
{
    if (n == 0)
        return;
    size_t want = grain ? (n + grain - 1) / grain : n;
    int threads = in_pool ? 1 : diffuse_pool_threads();
    int parts = want < (size_t)threads ? (int)want : threads;
    if (parts <= 1) {
        fn(ctx, 0, n);
        return;
    }
    pthread_once(&fork_once, register_fork);
    pthread_mutex_lock(&pool.call);
    pthread_mutex_lock(&pool.lock);
    while (pool.started < parts - 1) { /* workers are started on first need, kept for good */
        if (pthread_create(&pool.tid[pool.started], NULL, worker,
                           (void *)(intptr_t)(pool.started + 1)) != 0)
            break;
        pthread_detach(pool.tid[pool.started]);
        pool.started++;
    }
    if (parts > pool.started + 1)
        parts = pool.started + 1; /* could not start more: fewer, larger parts */
    pool.job = (pool_job){.fn = fn, .ctx = ctx, .n = n, .parts = parts};
    pool.pending = parts - 1;
    pool.generation++;
    pthread_cond_broadcast(&pool.wake);
    pool_job j = pool.job;
    pthread_mutex_unlock(&pool.lock);
    in_pool = true;
    run_part(&j, 0);
    in_pool = false;
    pthread_mutex_lock(&pool.lock);
    while (pool.pending)
        pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.call);
}
