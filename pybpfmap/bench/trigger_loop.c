/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap bench: the compiled reference trigger.  Calls getuid() (one real
 * syscall in glibc) in bursts of argv[2] calls for argv[1] seconds and prints
 * "<calls> <elapsed ns> <median ns per burst>", as the Python trigger does
 * (pybpfmap/bench/syscall.py), so that the two rates compare like for like.
 * Pinning is done by the caller.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define MAX_BURSTS (1 << 20)

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 1.0;
	long burst = argc > 2 ? atol(argv[2]) : 4096;
	long long *bursts = malloc(MAX_BURSTS * sizeof(*bursts));
	long long start = now_ns(), end = start + (long long)(seconds * 1e9), t0, t;
	unsigned long long calls = 0;
	long i, n = 0;

	if (!bursts)
		return 1;
	t = start;
	do {
		t0 = t;
		for (i = 0; i < burst; i++)
			getuid();
		calls += burst;
		t = now_ns();
		if (n < MAX_BURSTS)
			bursts[n++] = t - t0;
	} while (t < end);
	qsort(bursts, n, sizeof(*bursts), cmp);
	printf("%llu %lld %lld\n", calls, t - start, bursts[n / 2]);
	return 0;
}
