/* c_drain: the C reference for `python -m bench` (bench/drain.py).
 *
 * Creates one map, then for each repetition fills it, walks it and drains it, batch by batch
 * (bpf_map_update_batch, bpf_map_lookup_batch, bpf_map_lookup_and_delete_batch) and key by key
 * (update_elem; get_next_key + lookup_elem [+ delete_elem]), timing each scenario and checking
 * its result: element count, key sum, every value, and an empty map after a drain. A failed
 * check prints a message on stderr and exits 1. Prints one JSON object on stdout.
 *
 * Keys are i = 0..N-1, little-endian in the key's first (up to) 8 bytes, the rest zero; the
 * value of key i holds i + 1 + cpu in the first (up to) 8 bytes of each per-CPU slot (cpu 0
 * for other maps), the rest zero. The Python benchmark writes and checks the same pattern.
 *
 * Build (bench.py does this on demand):
 *   gcc -O2 -I build/libbpf/install/include bench/c_drain.c build/libbpf/install/lib/libbpf.a \
 *       -lelf -lz -o build/bench/c_drain
 * Usage:
 *   c_drain --type hash|percpu_hash --key-size K --value-size V \
 *           --entries N [--reps R] [--batch-size B] [--threads T] [--scenarios a,b,...]
 *   c_drain --fd FD [--reps R] [--batch-size B] [--threads T] [--scenarios ...]
 * --threads T splits lookup_batch and drain_batch among T pthreads as the library's workers
 * do: thread i starts at bucket n_buckets * i / T (n_buckets = roundup_pow_of_two(N)) and
 * stops once out_batch reaches the next thread's start; the last runs to ENOENT. A lookup's
 * last batch may run into the next share: keys seen twice there are skipped (a bitmap of keys
 * 0..N-1, the cheapest check C can make); a drain seeing a key twice fails the run.
 * With --fd, the program uses that (empty) map, inherited from its parent, instead of creating
 * one: type and sizes come from the kernel, N is its max_entries, and it is left empty. The
 * Python benchmark uses this so that C and Python measure the very same map.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pthread.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

enum scenario {
	FILL_BATCH, FILL_KEY, LOOKUP_BATCH, LOOKUP_KEY, DRAIN_BATCH, DRAIN_KEY, N_SCENARIOS
};
/* Run order within a repetition: each fill is followed by the walks and a drain that check
 * what it wrote. */
static const char *const scenario_names[N_SCENARIOS] = {
	"fill_batch", "fill_key", "lookup_batch", "lookup_key", "drain_batch", "drain_key",
};

struct map_types {
	const char *name;
	enum bpf_map_type type;
	int percpu;
};
static const struct map_types map_types[] = {
	{"hash", BPF_MAP_TYPE_HASH, 0},
	{"percpu_hash", BPF_MAP_TYPE_PERCPU_HASH, 1},
};

static struct {
	int fd;
	__u32 key_size, value_size, value_stride, slot, ncpus, n, batch;
	int percpu;
	/* the whole map's worth of elements, as written by a fill */
	unsigned char *keys, *values;
	/* the batch buffers, grown on ENOSPC */
	unsigned char *bkeys, *bvalues;
	__u32 capacity;
	__u32 threads;
	/* --threads: one bit per key 0..n-1, set when a thread first delivers it */
	uint64_t *seen;
} m;

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("c_drain: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void put_le(unsigned char *p, __u32 size, uint64_t v)
{
	for (__u32 i = 0; i < size && i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, __u32 size)
{
	uint64_t v = 0;

	for (__u32 i = 0; i < size && i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* What a check accumulates: count, sum of keys, and whether every value matched its key. */
struct tally {
	uint64_t count, key_sum;
	int bad_values;
};

static void tally_element(struct tally *t, const unsigned char *key, const unsigned char *value)
{
	uint64_t k = get_le(key, m.key_size);
	uint64_t mask = m.value_size >= 8 ? UINT64_MAX : (1ULL << (8 * m.value_size)) - 1;

	t->count++;
	t->key_sum += k;
	for (__u32 cpu = 0; cpu < m.ncpus; cpu++)
		if (get_le(value + cpu * m.slot, m.value_size) != ((k + 1 + cpu) & mask))
			t->bad_values++;
}

static void check_tally(const struct tally *t, const char *what)
{
	uint64_t n = m.n, want_sum = n * (n - 1) / 2;

	if (t->count != n)
		die("%s: %llu elements, expected %llu", what, (unsigned long long)t->count,
		    (unsigned long long)n);
	if (t->key_sum != want_sum)
		die("%s: key sum %llu, expected %llu", what, (unsigned long long)t->key_sum,
		    (unsigned long long)want_sum);
	if (t->bad_values)
		die("%s: %d values don't match their keys", what, t->bad_values);
}

static void check_empty(const char *what)
{
	unsigned char key[64];

	if (bpf_map_get_next_key(m.fd, NULL, key) != -ENOENT)
		die("%s: the map is not empty after the drain", what);
}

static void grow(void)
{
	m.capacity = m.capacity * 2 > m.n ? m.n : m.capacity * 2;
	m.bkeys = realloc(m.bkeys, (size_t)m.capacity * m.key_size);
	m.bvalues = realloc(m.bvalues, (size_t)m.capacity * m.value_stride);
	if (!m.bkeys || !m.bvalues)
		die("out of memory");
}

/* -- fills ----------------------------------------------------------------------------- */

static void fill_batch(void)
{
	__u32 count = m.n;
	int err = bpf_map_update_batch(m.fd, m.keys, m.values, &count, NULL);

	if (err || count != m.n)
		die("bpf_map_update_batch: %s, %u of %u applied", strerror(-err), count, m.n);
}

static void fill_key(void)
{
	for (__u32 i = 0; i < m.n; i++) {
		int err = bpf_map_update_elem(m.fd, m.keys + (size_t)i * m.key_size,
					      m.values + (size_t)i * m.value_stride, BPF_ANY);
		if (err)
			die("bpf_map_update_elem: %s at element %u", strerror(-err), i);
	}
}

/* -- batch walks: the drain loop the library implements, in C ---------------------------- */

static void walk_batch(int delete, struct tally *t)
{
	unsigned char cursor[64];
	void *in = NULL;
	__u32 count;
	int err;

	for (;;) {
		count = m.capacity;
		err = delete ? bpf_map_lookup_and_delete_batch(m.fd, in, cursor, m.bkeys, m.bvalues,
							      &count, NULL)
			     : bpf_map_lookup_batch(m.fd, in, cursor, m.bkeys, m.bvalues, &count,
						    NULL);
		if (err == -ENOSPC) {
			/* hashtab.c: ENOSPC only when nothing was copied; retry bigger */
			if (m.capacity >= m.n)
				die("ENOSPC with a batch of max_entries");
			grow();
			continue;
		}
		if (err && err != -ENOENT)
			die("%s: %s", delete ? "bpf_map_lookup_and_delete_batch"
					     : "bpf_map_lookup_batch", strerror(-err));
		for (__u32 i = 0; i < count; i++)
			tally_element(t, m.bkeys + (size_t)i * m.key_size,
				      m.bvalues + (size_t)i * m.value_stride);
		if (err == -ENOENT)
			return;
		in = cursor;
	}
}

/* -- the same walk split among threads by bucket ------------------------------------------ */

struct share {
	pthread_t thread;
	int delete;
	__u32 start;
	uint64_t end;  /* the next share's start; past every bucket for the last */
	struct tally t;
	uint64_t seam_dups;
	const char *error;
	int err;
};

static void *walk_share(void *arg)
{
	struct share *sh = arg;
	__u32 capacity = m.batch < m.n ? m.batch : m.n, count, cursor = sh->start;
	unsigned char *keys = malloc((size_t)capacity * m.key_size);
	unsigned char *values = malloc((size_t)capacity * m.value_stride);
	int err;

	if (!keys || !values) {
		sh->error = "out of memory";
		return NULL;
	}
	for (;;) {
		count = capacity;
		err = sh->delete ? bpf_map_lookup_and_delete_batch(m.fd, &cursor, &cursor, keys,
								   values, &count, NULL)
				 : bpf_map_lookup_batch(m.fd, &cursor, &cursor, keys, values, &count,
							NULL);
		if (err == -ENOSPC) {
			if (capacity >= m.n) {
				sh->error = "ENOSPC with a batch of max_entries";
				break;
			}
			capacity = capacity * 2 > m.n ? m.n : capacity * 2;
			keys = realloc(keys, (size_t)capacity * m.key_size);
			values = realloc(values, (size_t)capacity * m.value_stride);
			if (!keys || !values) {
				sh->error = "out of memory";
				return NULL;
			}
			continue;
		}
		if (err && err != -ENOENT) {
			sh->error = sh->delete ? "bpf_map_lookup_and_delete_batch"
					       : "bpf_map_lookup_batch";
			sh->err = err;
			break;
		}
		for (__u32 i = 0; i < count; i++) {
			const unsigned char *key = keys + (size_t)i * m.key_size;
			uint64_t k = get_le(key, m.key_size), bit = 1ULL << (k % 64);

			if (k < m.n && __atomic_fetch_or(&m.seen[k / 64], bit, __ATOMIC_RELAXED) & bit) {
				sh->seam_dups++;  /* read by the previous share's last batch too */
				continue;
			}
			tally_element(&sh->t, key, values + (size_t)i * m.value_stride);
		}
		if (err == -ENOENT || cursor >= sh->end)
			break;
	}
	free(keys);
	free(values);
	return NULL;
}

static void walk_threads(int delete, struct tally *t)
{
	uint64_t n_buckets = 1, words = ((uint64_t)m.n + 63) / 64;
	struct share *shares = calloc(m.threads, sizeof(*shares));

	while (n_buckets < m.n)
		n_buckets <<= 1;
	if (!shares)
		die("out of memory");
	memset(m.seen, 0, words * sizeof(uint64_t));
	for (__u32 i = 0; i < m.threads; i++) {
		shares[i].delete = delete;
		shares[i].start = (__u32)(n_buckets * i / m.threads);
		shares[i].end = i + 1 < m.threads ? n_buckets * (i + 1) / m.threads : UINT64_MAX;
		if (pthread_create(&shares[i].thread, NULL, walk_share, &shares[i]))
			die("pthread_create failed");
	}
	for (__u32 i = 0; i < m.threads; i++) {
		pthread_join(shares[i].thread, NULL);
		if (shares[i].error)
			die("thread %u: %s: %s", i, shares[i].error, strerror(-shares[i].err));
		if (delete && shares[i].seam_dups)
			die("drain: %llu keys delivered twice", (unsigned long long)shares[i].seam_dups);
		t->count += shares[i].t.count;
		t->key_sum += shares[i].t.key_sum;
		t->bad_values += shares[i].t.bad_values;
	}
	free(shares);
}

/* -- per-key walks: the next key is taken before the current one is deleted -------------- */

static void walk_key(int delete, struct tally *t)
{
	unsigned char a[64], b[64], *key = a, *next = b, *tmp;
	unsigned char *value = m.bvalues;
	int more, err;

	more = bpf_map_get_next_key(m.fd, NULL, key) == 0;
	while (more) {
		err = bpf_map_get_next_key(m.fd, key, next);
		if (err && err != -ENOENT)
			die("bpf_map_get_next_key: %s", strerror(-err));
		more = err == 0;
		err = bpf_map_lookup_elem(m.fd, key, value);
		if (err)
			die("bpf_map_lookup_elem: %s", strerror(-err));
		if (delete) {
			err = bpf_map_delete_elem(m.fd, key);
			if (err)
				die("bpf_map_delete_elem: %s", strerror(-err));
		}
		tally_element(t, key, value);
		tmp = key;
		key = next;
		next = tmp;
	}
}

static void drain_untimed(void)
{
	struct tally t = {0};

	walk_batch(1, &t);  /* untimed: the single loop, whatever --threads says */
	check_tally(&t, "drain");
	check_empty("drain");
}

/* -- main --------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void usage(void)
{
	fputs("usage: c_drain --type hash|percpu_hash --key-size K --value-size V --entries N\n"
	      "               [--reps R] [--batch-size B] [--threads T] [--scenarios a,b,...]\n"
	      "       c_drain --fd FD [--reps R] [--batch-size B] [--threads T] [--scenarios ...]\n",
	      stderr);
	exit(2);
}

/* --fd: take type and sizes from the kernel, and insist on an empty map */
static const struct map_types *use_fd(int fd)
{
	struct bpf_map_info info;
	__u32 len = sizeof(info);
	unsigned char key[64];
	int err;

	memset(&info, 0, sizeof(info));
	err = bpf_obj_get_info_by_fd(fd, &info, &len);
	if (err)
		die("bpf_obj_get_info_by_fd(%d): %s", fd, strerror(-err));
	m.fd = fd;
	m.key_size = info.key_size;
	m.value_size = info.value_size;
	m.n = info.max_entries;
	if (!m.key_size || m.key_size > 64 || !m.value_size || !m.n)
		die("--fd %d: key_size %u, value_size %u, max_entries %u not supported", fd,
		    info.key_size, info.value_size, info.max_entries);
	if (bpf_map_get_next_key(fd, NULL, key) != -ENOENT)
		die("--fd %d: the map must be empty", fd);
	for (size_t i = 0; i < sizeof(map_types) / sizeof(map_types[0]); i++)
		if (map_types[i].type == info.type)
			return &map_types[i];
	die("--fd %d: map type %u not supported", fd, info.type);
	return NULL;
}

static unsigned long parse_num(const char *s, const char *what, unsigned long min)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || !*s || v < min || v > UINT32_MAX)
		die("%s: expected an integer >= %lu, got '%s'", what, min, s);
	return v;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"type", required_argument, NULL, 't'},
		{"key-size", required_argument, NULL, 'k'},
		{"value-size", required_argument, NULL, 'v'},
		{"entries", required_argument, NULL, 'n'},
		{"reps", required_argument, NULL, 'r'},
		{"batch-size", required_argument, NULL, 'b'},
		{"scenarios", required_argument, NULL, 's'},
		{"fd", required_argument, NULL, 'f'},
		{"threads", required_argument, NULL, 'T'},
		{NULL, 0, NULL, 0},
	};
	const struct map_types *type = NULL;
	unsigned long reps = 3;
	long fd = -1;
	int want[N_SCENARIOS] = {0}, c;
	char *list = NULL;
	double *samples[N_SCENARIOS];

	m.batch = 4096;
	m.threads = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			for (size_t i = 0; i < sizeof(map_types) / sizeof(map_types[0]); i++)
				if (!strcmp(optarg, map_types[i].name))
					type = &map_types[i];
			if (!type)
				die("unknown map type '%s'", optarg);
			break;
		case 'k': m.key_size = parse_num(optarg, "--key-size", 1); break;
		case 'v': m.value_size = parse_num(optarg, "--value-size", 1); break;
		case 'n': m.n = parse_num(optarg, "--entries", 1); break;
		case 'r': reps = parse_num(optarg, "--reps", 1); break;
		case 'b': m.batch = parse_num(optarg, "--batch-size", 1); break;
		case 's': list = optarg; break;
		case 'f': fd = (long)parse_num(optarg, "--fd", 0); break;
		case 'T': m.threads = parse_num(optarg, "--threads", 1); break;
		default: usage();
		}
	}
	if (fd >= 0) {
		if (type || m.key_size || m.value_size || m.n)
			die("--fd takes type and sizes from the map: drop --type, --key-size, "
			    "--value-size and --entries");
		type = use_fd((int)fd);
	}
	if (!type || !m.key_size || !m.value_size || !m.n || optind != argc)
		usage();
	if (m.key_size > 64)
		die("--key-size: at most 64 bytes");
	if (list) {
		for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
			int found = 0;

			for (int s = 0; s < N_SCENARIOS; s++)
				if (!strcmp(tok, scenario_names[s]))
					want[s] = found = 1;
			if (!found)
				die("unknown scenario '%s'", tok);
		}
	} else {
		for (int s = 0; s < N_SCENARIOS; s++)
			want[s] = 1;
	}

	m.percpu = type->percpu;
	m.ncpus = 1;
	m.value_stride = m.slot = m.value_size;
	if (m.percpu) {
		int ncpus = libbpf_num_possible_cpus();

		if (ncpus < 0)
			die("libbpf_num_possible_cpus: %s", strerror(-ncpus));
		m.ncpus = ncpus;
		m.slot = (m.value_size + 7) & ~7U;  /* bpf_map_value_size(): round_up(size, 8) */
		m.value_stride = m.slot * m.ncpus;
	}
	if (fd < 0) {
		m.fd = bpf_map_create(type->type, "c_drain", m.key_size, m.value_size, m.n, NULL);
		if (m.fd < 0)
			die("bpf_map_create: %s", strerror(-m.fd));
	}

	m.keys = calloc(m.n, m.key_size);
	m.values = calloc(m.n, m.value_stride);
	if (!m.keys || !m.values)
		die("out of memory");
	for (__u32 i = 0; i < m.n; i++) {
		put_le(m.keys + (size_t)i * m.key_size, m.key_size, i);
		for (__u32 cpu = 0; cpu < m.ncpus; cpu++)
			put_le(m.values + (size_t)i * m.value_stride + cpu * m.slot, m.value_size,
			       (uint64_t)i + 1 + cpu);
	}
	m.seen = calloc((m.n + 63) / 64, sizeof(uint64_t));
	if (!m.seen)
		die("out of memory");
	m.capacity = m.batch < m.n ? m.batch : m.n;
	m.bkeys = malloc((size_t)m.capacity * m.key_size);
	m.bvalues = malloc((size_t)(m.capacity > 1 ? m.capacity : 1) * m.value_stride);
	if (!m.bkeys || !m.bvalues)
		die("out of memory");
	for (int s = 0; s < N_SCENARIOS; s++) {
		samples[s] = calloc(reps, sizeof(double));
		if (!samples[s])
			die("out of memory");
	}

	for (unsigned long r = 0; r < reps; r++) {
		int full = 0;

		for (int s = 0; s < N_SCENARIOS; s++) {
			struct tally t = {0};
			double t0, t1;

			if (!want[s])
				continue;
			/* fills start from an empty map, walks and drains from a full one */
			if ((s == FILL_BATCH || s == FILL_KEY) && full) {
				drain_untimed();
				full = 0;
			} else if (s != FILL_BATCH && s != FILL_KEY && !full) {
				fill_batch();
				full = 1;
			}
			/* each walk starts with the batch size asked for */
			m.capacity = m.batch < m.n ? m.batch : m.n;
			t0 = now_ns();
			switch (s) {
			case FILL_BATCH: fill_batch(); break;
			case FILL_KEY: fill_key(); break;
			case LOOKUP_BATCH:
				if (m.threads > 1)
					walk_threads(0, &t);
				else
					walk_batch(0, &t);
				break;
			case LOOKUP_KEY: walk_key(0, &t); break;
			case DRAIN_BATCH:
				if (m.threads > 1)
					walk_threads(1, &t);
				else
					walk_batch(1, &t);
				break;
			case DRAIN_KEY: walk_key(1, &t); break;
			}
			t1 = now_ns();
			samples[s][r] = (t1 - t0) / m.n;
			switch (s) {
			case FILL_BATCH:
			case FILL_KEY:
				/* checked by the walk, drain or untimed drain that follows */
				full = 1;
				break;
			case LOOKUP_BATCH:
			case LOOKUP_KEY:
				check_tally(&t, scenario_names[s]);
				break;
			default:
				check_tally(&t, scenario_names[s]);
				check_empty(scenario_names[s]);
				full = 0;
			}
		}
		if (full)
			drain_untimed();  /* checks the last fill, and leaves the map empty */
	}

	printf("{\"program\": \"c_drain\", \"libbpf\": \"%s\", \"map_type\": \"%s\", "
	       "\"key_size\": %u, \"value_size\": %u, \"value_stride\": %u, \"ncpus\": %u, "
	       "\"entries\": %u, \"batch_size\": %u, \"threads\": %u, \"reps\": %lu, "
	       "\"checked\": true, \"scenarios\": {",
	       libbpf_version_string(), type->name, m.key_size, m.value_size, m.value_stride,
	       m.ncpus, m.n, m.batch, m.threads, reps);
	for (int s = 0, first = 1; s < N_SCENARIOS; s++) {
		if (!want[s])
			continue;
		printf("%s\"%s\": {\"ns_per_entry\": [", first ? "" : ", ", scenario_names[s]);
		for (unsigned long r = 0; r < reps; r++)
			printf("%s%.2f", r ? ", " : "", samples[s][r]);
		qsort(samples[s], reps, sizeof(double), cmp_double);
		printf("], \"median\": %.2f}",
		       reps % 2 ? samples[s][reps / 2]
				: (samples[s][reps / 2 - 1] + samples[s][reps / 2]) / 2);
		first = 0;
	}
	printf("}}\n");
	return 0;
}
