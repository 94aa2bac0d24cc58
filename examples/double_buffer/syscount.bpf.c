// SPDX-License-Identifier: BSD-2-Clause
/*
 * syscount: every syscall on the host counted per (process, syscall number), in place, in a
 * double-buffered map, so that user space can harvest exact per-interval counts
 * (examples/double_buffer/harvest.py).
 *
 * Build (harvest.py does this for you):
 *   clang -target bpf -g -O2 $(libbpf-batch includes) -I<libbpf include dir> \
 *         -c syscount.bpf.c -o syscount.bpf.o
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <libbpf_batch/double_buffer.bpf.h>

struct syscall_key {
	__u32 pid;	/* thread group id: the process */
	__u32 nr;	/* syscall number */
};

struct syscall_stats {
	__u64 count;
	char comm[16];
};

/*
 * `counts` is a one-slot ARRAY_OF_MAPS; its slot holds the HASH map the program writes.
 * User space swaps a spare HASH map into the slot to harvest (DoubleBufferedMap.harvest()).
 */
LBB_DOUBLE_BUFFER(counts, BPF_MAP_TYPE_HASH, struct syscall_key, struct syscall_stats, 10240);

SEC("raw_tracepoint/sys_enter")
int count_syscalls(struct bpf_raw_tracepoint_args *ctx)
{
	struct syscall_key key = {
		.pid = bpf_get_current_pid_tgid() >> 32,
		.nr = (__u32)ctx->args[1],
	};
	struct syscall_stats *stats, init = {};
	void *m;

	/* Once per run, and only this pointer in this run: that is what makes the swap exact. */
	m = lbb_double_buffer_current(&counts);
	if (!m)
		return 0;
	stats = bpf_map_lookup_elem(m, &key);
	if (!stats) {
		bpf_get_current_comm(init.comm, sizeof(init.comm));
		/* NOEXIST: another CPU may have created it meanwhile; then use theirs */
		bpf_map_update_elem(m, &key, &init, BPF_NOEXIST);
		stats = bpf_map_lookup_elem(m, &key);
		if (!stats)
			return 0;	/* the map is full */
	}
	__sync_fetch_and_add(&stats->count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
