/* export_perkey: the per-key reader the exporter benchmark compares against.
 *
 * Walks a map the way ebpf_exporter reads one at every scrape: bpf_map_get_next_key, then
 * bpf_map_lookup_elem, two syscalls per key. The walk's result is checked by the caller
 * (element count and the sum of every value's first 8 bytes). With --format it also writes
 * each element as a Prometheus text line (key fields u32 pid, u16 port, u8 proto; values two
 * u64) into a reused buffer, the rest of a scrape's work, done in C.
 *
 * Build (bench/export_bench.py does this):
 *   gcc -O2 -I build/libbpf/install/include bench/export_perkey.c \
 *       build/libbpf/install/lib/libbpf.a -lelf -lz -o build/bench/export_perkey
 * Usage: export_perkey --id MAP_ID [--format]
 * Prints one JSON object: {"entries": N, "sum": S, "seconds": T, "bytes": B}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <bpf/bpf.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct bpf_map_info info = {};
	__u32 info_len = sizeof(info);
	unsigned long long entries = 0, sum = 0, bytes = 0;
	int map_id = -1, format = 0, fd, err;
	char *key, *next, *value, line[256];
	double start, seconds;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--id") && i + 1 < argc)
			map_id = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--format"))
			format = 1;
	}
	if (map_id < 0) {
		fprintf(stderr, "usage: export_perkey --id MAP_ID [--format]\n");
		return 2;
	}
	fd = bpf_map_get_fd_by_id(map_id);
	if (fd < 0 || bpf_obj_get_info_by_fd(fd, &info, &info_len)) {
		fprintf(stderr, "map id %d: %s\n", map_id, strerror(errno));
		return 1;
	}
	key = calloc(1, info.key_size);
	next = calloc(1, info.key_size);
	value = calloc(1, info.value_size);

	start = now();
	err = bpf_map_get_next_key(fd, NULL, next);
	while (!err) {
		memcpy(key, next, info.key_size);
		if (!bpf_map_lookup_elem(fd, key, value)) {
			__u64 a, b;

			memcpy(&a, value, 8);
			sum += a;
			entries++;
			if (format && info.key_size >= 7 && info.value_size >= 16) {
				__u32 pid;
				__u16 port;

				memcpy(&pid, key, 4);
				memcpy(&port, key + 4, 2);
				memcpy(&b, value + 8, 8);
				bytes += snprintf(line, sizeof(line),
					"flows_packets_total{pid=\"%u\",port=\"%u\",proto=\"%u\"} %llu\n",
					pid, port, (unsigned)(unsigned char)key[6], (unsigned long long)a);
				bytes += snprintf(line, sizeof(line),
					"flows_bytes_total{pid=\"%u\",port=\"%u\",proto=\"%u\"} %llu\n",
					pid, port, (unsigned)(unsigned char)key[6], (unsigned long long)b);
			}
		}
		err = bpf_map_get_next_key(fd, key, next);
	}
	seconds = now() - start;
	if (errno != ENOENT) {
		fprintf(stderr, "get_next_key: %s\n", strerror(errno));
		return 1;
	}
	printf("{\"entries\": %llu, \"sum\": %llu, \"seconds\": %.6f, \"bytes\": %llu}\n",
	       entries, sum, seconds, bytes);
	return 0;
}
