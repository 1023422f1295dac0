// Threads for the kernels. Preferred: torch's own OpenMP runtime (see
// use_openmp_runtime), so the kernels and torch's ops share one set of workers
// on a small CPU. Fallback: a small persistent pool whose workers spin briefly
// after a job (kernels come in quick succession), then sleep on a condition
// variable; it is used when torch is not on libgomp, after fork(), or on request.
#pragma once
#include <cstdint>

namespace sparseprop {

using TaskFn = void (*)(void* ctx, int thread_id, int num_threads);

// Runs fn(ctx, t, n) for t in [0, n) on n threads (the caller is thread 0) and
// returns when all are done. Calls from several Python threads are serialized.
void parallel_run(int num_threads, TaskFn fn, void* ctx);

// Upper bound on useful threads (hardware concurrency, at least 1).
int max_threads();

// Runs parallel_run's jobs on an OpenMP runtime that is already loaded (torch's
// libgomp), given its GOMP_parallel, omp_get_thread_num and omp_get_num_threads
// entry points: the kernels then share torch's worker threads instead of
// competing with them for the cores. Null pointers return to the built-in pool.
void use_openmp_runtime(void* gomp_parallel, void* omp_get_thread_num, void* omp_get_num_threads);
bool using_openmp_runtime();

}  // namespace sparseprop
