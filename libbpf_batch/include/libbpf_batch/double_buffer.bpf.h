/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * libbpf-batch: double-buffered maps, for exact interval harvests of counters that a BPF
 * program updates in place.
 *
 * A program that counts in place (v = bpf_map_lookup_elem(m, &k); __sync_fetch_and_add(v, 1))
 * races with a user-space drain: an increment landing on an element after the kernel copied
 * and deleted it is lost. Instead, declare the map double-buffered and look the counter map up
 * through it on every run:
 *
 *     #include <libbpf_batch/double_buffer.bpf.h>
 *
 *     LBB_DOUBLE_BUFFER(counts, BPF_MAP_TYPE_HASH, struct my_key, struct my_value, 10240);
 *
 *     SEC("raw_tracepoint/sys_enter")
 *     int count(void *ctx)
 *     {
 *             void *m = lbb_double_buffer_current(&counts);
 *             struct my_value *v;
 *
 *             if (!m)
 *                     return 0;
 *             v = bpf_map_lookup_elem(m, &key);
 *             ...
 *     }
 *
 * `counts` is a one-slot BPF_MAP_TYPE_ARRAY_OF_MAPS whose slot holds the counter map (an
 * inner map `counts__lbb_buf`, created and put in the slot by libbpf at load). In Python,
 * libbpf_batch.DoubleBufferedMap(outer map) creates a spare inner map with the same spec and
 * harvest() puts it in the slot. The kernel's update of a map-of-maps element waits for every
 * running non-sleepable BPF program to finish (synchronize_rcu() in maybe_wait_bpf_programs(),
 * kernel/bpf/syscall.c), so once the swap returns nothing writes the old map any more: it is
 * drained without racing, and becomes the next spare.
 *
 * Rules for the program:
 *  - call lbb_double_buffer_current() once per run and use only that pointer in the run;
 *    never keep it (in a map, a global) for a later run;
 *  - the program must not be sleepable (SEC("*.s")): the kernel does not wait for those;
 *  - the inner map may be any map type that can be drained (HASH, LRU_HASH, PERCPU_HASH,
 *    LRU_PERCPU_HASH, LPM_TRIE, ...), not an ARRAY.
 *
 * Compile with: clang -target bpf -O2 -g $(libbpf-batch includes) -I<libbpf include> ...
 * (libbpf_batch.get_include() gives the same directory.)
 */
#ifndef __LIBBPF_BATCH_DOUBLE_BUFFER_BPF_H
#define __LIBBPF_BATCH_DOUBLE_BUFFER_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/*
 * Declare `name`, a double-buffered map of `map_type` (key `key_type`, value `value_type`,
 * `max_entries` elements) created with `map_flags` (0, or e.g. BPF_F_NO_PREALLOC).
 */
#define LBB_DOUBLE_BUFFER_FLAGS(name, map_type, key_type, value_type, entries, flags)	\
	struct name##__lbb_inner {							\
		__uint(type, map_type);							\
		__uint(max_entries, entries);						\
		__uint(map_flags, flags);						\
		__type(key, key_type);							\
		__type(value, value_type);						\
	} name##__lbb_buf SEC(".maps");						\
	struct {									\
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);				\
		__uint(max_entries, 1);							\
		__type(key, __u32);							\
		__array(values, struct name##__lbb_inner);				\
	} name SEC(".maps") = { .values = { [0] = &name##__lbb_buf } }

/* LBB_DOUBLE_BUFFER_FLAGS() with map_flags 0. */
#define LBB_DOUBLE_BUFFER(name, map_type, key_type, value_type, entries)		\
	LBB_DOUBLE_BUFFER_FLAGS(name, map_type, key_type, value_type, entries, 0)

/*
 * The map currently in `outer`'s slot (pass &name), for bpf_map_lookup_elem() and
 * bpf_map_update_elem() on it; NULL only if user space emptied the slot.
 */
static __always_inline void *lbb_double_buffer_current(void *outer)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(outer, &zero);
}

#endif /* __LIBBPF_BATCH_DOUBLE_BUFFER_BPF_H */
