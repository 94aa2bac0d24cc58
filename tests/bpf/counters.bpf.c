// SPDX-License-Identifier: BSD-2-Clause
/*
 * Test and example program for libbpf-batch: BTF-typed maps written from the kernel.
 *
 *   count_udp       socket filter: packets and bytes per UDP destination port (port_counts),
 *                   packets per port and CPU (port_packets), and a global total (.bss).
 *   count_syscalls  raw tracepoint on sys_enter: syscalls per (pid, syscall nr) (syscalls).
 *   samples         written only from user space: one value of every BTF kind the decoder knows.
 *
 * Build: clang -target bpf -g -O2 -I<libbpf>/include -c counters.bpf.c -o counters.bpf.o
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define PROTO_UDP 17

struct port_key {
	__u16 port;	/* destination port, host byte order */
	__u8 proto;	/* IPPROTO_UDP */
	__u8 pad;
};

struct port_stats {
	__u64 packets;
	__u64 bytes;	/* skb->len as the filter sees it: UDP header + payload */
	__u32 last_len;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct port_key);
	__type(value, struct port_stats);
} port_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u64);
} port_packets SEC(".maps");

__u64 total_packets = 0;

struct syscall_key {
	__u32 pid;	/* thread group id */
	__u32 nr;	/* syscall number */
};

struct syscall_stats {
	__u64 count;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct syscall_key);
	__type(value, struct syscall_stats);
} syscalls SEC(".maps");

enum color { RED = 0, GREEN = 1, BLUE = 7 };
typedef __s32 temp_t;
struct point { __s16 x; __s16 y; };

struct sample {
	char name[12];
	__s8 s8;
	__u8 u8;
	__s16 s16;
	__u16 u16;
	temp_t temp;
	const volatile __u32 cv;
	__u64 big;
	__s64 neg;
	enum color color;
	struct point pts[2];
	__u8 raw[4];
	union {
		__u32 as_u32;
		__u8 as_bytes[4];
	} u;
	struct {
		__u32 a : 3;
		__u32 b : 5;
		__s32 c : 6;
		__u32 rest : 18;
	} bits;
	_Bool flag;
	char tail[3];
	double ratio;
	void *ptr;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct sample);
} samples SEC(".maps");

SEC("socket")
int count_udp(struct __sk_buff *skb)
{
	struct port_key key = { .proto = PROTO_UDP };
	struct port_stats *stats, init = {};
	__u64 one = 1, *pkts;
	__u16 dport;

	/* A UDP socket's filter sees the skb from the UDP header on (udp_queue_rcv_one_skb). */
	if (bpf_skb_load_bytes(skb, 2, &dport, sizeof(dport)) < 0)
		return skb->len;
	key.port = bpf_ntohs(dport);

	stats = bpf_map_lookup_elem(&port_counts, &key);
	if (!stats) {
		bpf_map_update_elem(&port_counts, &key, &init, BPF_NOEXIST);
		stats = bpf_map_lookup_elem(&port_counts, &key);
		if (!stats)
			return skb->len;
	}
	__sync_fetch_and_add(&stats->packets, 1);
	__sync_fetch_and_add(&stats->bytes, skb->len);
	stats->last_len = skb->len;

	pkts = bpf_map_lookup_elem(&port_packets, &key.port);
	if (pkts)
		*pkts += 1;	/* per-CPU: no other writer on this slot */
	else
		bpf_map_update_elem(&port_packets, &key.port, &one, BPF_NOEXIST);

	__sync_fetch_and_add(&total_packets, 1);
	return skb->len;	/* keep the whole packet */
}

SEC("raw_tracepoint/sys_enter")
int count_syscalls(struct bpf_raw_tracepoint_args *ctx)
{
	struct syscall_key key = {
		.pid = bpf_get_current_pid_tgid() >> 32,
		.nr = (__u32)ctx->args[1],
	};
	struct syscall_stats *stats, init = {};

	stats = bpf_map_lookup_elem(&syscalls, &key);
	if (!stats) {
		bpf_get_current_comm(init.comm, sizeof(init.comm));
		bpf_map_update_elem(&syscalls, &key, &init, BPF_NOEXIST);
		stats = bpf_map_lookup_elem(&syscalls, &key);
		if (!stats)
			return 0;
	}
	__sync_fetch_and_add(&stats->count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
