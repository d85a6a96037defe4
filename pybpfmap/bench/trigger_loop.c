/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap bench: the syscall trigger, one process per CPU (the caller pins
 * it), as samples/bpf/map_perf_test's children are: getuid() in a tight loop.
 *
 *   trigger_loop WARMUP_NS WINDOW_NS
 *
 * Prints "ready", reads the common start time (CLOCK_MONOTONIC ns) from
 * stdin, spins until then, calls getuid() for WARMUP_NS (not timed: the
 * program, its map and the caches warm up) and then for WINDOW_NS, and
 * prints one line:
 *
 *   <warm-up calls> <calls> <window ns> <bursts> <median> <p10> <p90>
 *
 * where the last three are ns per call within a burst.  Calls are made in
 * bursts between two clock reads; during the warm-up the burst grows until
 * it lasts BURST_NS, so that the clock costs nothing per call and the window
 * ends at most one burst late.  Phases are absolute times, so every CPU's
 * window is the same.  pybpfmap/bench/syscall.py has the same loop in
 * Python, the fallback where no C compiler exists.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define MAX_BURSTS (1 << 20)
#define MAX_BURST (1L << 20)
#define BURST_NS 50000LL

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	long long warmup, window, start, warm_end, end, t0, t;
	unsigned long long warm_calls = 0, calls = 0;
	long burst = 1, i, n = 0;
	double *per_call;

	if (argc != 3)
		return 2;
	warmup = atoll(argv[1]);
	window = atoll(argv[2]);
	per_call = malloc(MAX_BURSTS * sizeof(*per_call));
	if (!per_call)
		return 1;
	printf("ready\n");
	fflush(stdout);
	if (scanf("%lld", &start) != 1)
		return 3;
	warm_end = start + warmup;
	end = warm_end + window;
	while (now_ns() < start)
		;
	t = now_ns();
	while (t < warm_end) {
		t0 = t;
		for (i = 0; i < burst; i++)
			getuid();
		warm_calls += burst;
		t = now_ns();
		if (t - t0 < BURST_NS && burst < MAX_BURST)
			burst *= 2;
	}
	start = t;
	do {
		t0 = t;
		for (i = 0; i < burst; i++)
			getuid();
		calls += burst;
		t = now_ns();
		if (n < MAX_BURSTS)
			per_call[n++] = (double)(t - t0) / burst;
	} while (t < end);
	qsort(per_call, n, sizeof(*per_call), cmp);
	printf("%llu %llu %lld %ld %.3f %.3f %.3f\n", warm_calls, calls, t - start, n,
	       per_call[n / 2], per_call[n / 10], per_call[n - 1 - n / 10]);
	return 0;
}
