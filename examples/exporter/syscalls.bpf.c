// SPDX-License-Identifier: BSD-2-Clause
/*
 * Syscalls per process name and syscall number, from the sys_enter raw tracepoint.
 * Served by `libbpf-batch export --config syscalls.yaml` as ebpf_exporter_syscalls_total.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct syscall_key {
	char comm[16];	/* the thread's name (bpf_get_current_comm) */
	__u32 nr;	/* syscall number */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct syscall_key);
	__type(value, __u64);
} syscalls_total SEC(".maps");

SEC("raw_tracepoint/sys_enter")
int count_syscalls(struct bpf_raw_tracepoint_args *ctx)
{
	struct syscall_key key = { .nr = (__u32)ctx->args[1] };
	__u64 one = 1, *count;

	bpf_get_current_comm(key.comm, sizeof(key.comm));
	count = bpf_map_lookup_elem(&syscalls_total, &key);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&syscalls_total, &key, &one, BPF_NOEXIST);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
