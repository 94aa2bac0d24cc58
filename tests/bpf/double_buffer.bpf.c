// SPDX-License-Identifier: BSD-2-Clause
/*
 * Test program for libbpf-batch's double-buffered maps: every syscall of one process (the
 * tgid in `target`, slot 0; 0 counts every process) is counted in place twice, per
 * (pid, syscall nr):
 *
 *   db_syscalls     double-buffered (LBB_DOUBLE_BUFFER): harvested by swapping, exact;
 *   plain_syscalls  a plain HASH: drained with lookup_and_delete, racing the increments.
 *
 * Build: clang -target bpf -g -O2 -I<libbpf>/include -I$(libbpf-batch includes) -c ...
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <libbpf_batch/double_buffer.bpf.h>

struct syscall_key {
	__u32 pid;	/* thread group id */
	__u32 nr;	/* syscall number */
};

struct syscall_stats {
	__u64 count;
};

LBB_DOUBLE_BUFFER(db_syscalls, BPF_MAP_TYPE_HASH, struct syscall_key, struct syscall_stats,
		  4096);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct syscall_key);
	__type(value, struct syscall_stats);
} plain_syscalls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

/* Look the key up, creating it on first use, and add one in place. */
static __always_inline void count(void *counts, struct syscall_key *key)
{
	struct syscall_stats *stats, init = {};

	stats = bpf_map_lookup_elem(counts, key);
	if (!stats) {
		bpf_map_update_elem(counts, key, &init, BPF_NOEXIST);
		stats = bpf_map_lookup_elem(counts, key);
		if (!stats)
			return;
	}
	__sync_fetch_and_add(&stats->count, 1);
}

SEC("raw_tracepoint/sys_enter")
int count_syscalls(struct bpf_raw_tracepoint_args *ctx)
{
	struct syscall_key key = {
		.pid = bpf_get_current_pid_tgid() >> 32,
		.nr = (__u32)ctx->args[1],
	};
	__u32 zero = 0, *want;
	void *counts;

	want = bpf_map_lookup_elem(&target, &zero);
	if (want && *want && *want != key.pid)
		return 0;
	counts = lbb_double_buffer_current(&db_syscalls);
	if (counts)
		count(counts, &key);
	count(&plain_syscalls, &key);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
