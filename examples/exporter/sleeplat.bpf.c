// SPDX-License-Identifier: BSD-2-Clause
/*
 * A biolatency-like log2 histogram: how long nanosleep/clock_nanosleep calls took, in
 * microseconds, per process name. Per-CPU buckets (no atomics on the hot path); the exporter
 * sums the CPUs (or splits them with `percpu: cpu`).
 *
 * Bucket k counts calls that took at most 2^k us (and more than 2^(k-1)), so Prometheus'
 * le="2^k" is exact; key MAX_BUCKET + 1 holds the sum of microseconds, as ebpf_exporter reads it.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_BUCKET 26
#define NR_NANOSLEEP 35		/* x86_64 */
#define NR_CLOCK_NANOSLEEP 230
#define NR_ARM64_NANOSLEEP 101
#define NR_ARM64_CLOCK_NANOSLEEP 115

struct hist_key {
	char comm[16];
	__u64 bucket;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);	/* thread id */
	__type(value, __u64);	/* when its sleep started, ns */
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct hist_key);
	__type(value, __u64);
} sleep_latency_seconds SEC(".maps");

static __always_inline int is_sleep(__u64 nr)
{
#if defined(__TARGET_ARCH_arm64)
	return nr == NR_ARM64_NANOSLEEP || nr == NR_ARM64_CLOCK_NANOSLEEP;
#else
	return nr == NR_NANOSLEEP || nr == NR_CLOCK_NANOSLEEP;
#endif
}

static __always_inline void add(struct hist_key *key, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sleep_latency_seconds, key);

	if (v)
		*v += n;	/* per-CPU slot: no other writer */
	else
		bpf_map_update_elem(&sleep_latency_seconds, key, &n, BPF_NOEXIST);
}

SEC("raw_tracepoint/sys_enter")
int sleep_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 now;

	if (!is_sleep(ctx->args[1]))
		return 0;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&starts, &tid, &now, BPF_ANY);
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int sleep_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct hist_key key = {};
	__u64 *start, us, bucket = 0;

	start = bpf_map_lookup_elem(&starts, &tid);
	if (!start)
		return 0;
	us = (bpf_ktime_get_ns() - *start) / 1000;
	bpf_map_delete_elem(&starts, &tid);

	while (bucket < MAX_BUCKET && (1ULL << bucket) < us)	/* ceil(log2(us)) */
		bucket++;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.bucket = bucket;
	add(&key, 1);
	key.bucket = MAX_BUCKET + 1;
	add(&key, us);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
