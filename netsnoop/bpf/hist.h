/* Log2 histograms kept in BPF maps, read by netsnoop/hist.py.
 *
 * A histogram is one `struct hist` value: slot i counts values v with
 * floor(log2(v)) == i (slot 0 also takes v == 0; the last slot takes everything
 * larger), plus the count and the exact sum of all values, so user space can print
 * totals and averages.
 * Tools keep them in a BPF_MAP_TYPE_PERCPU_HASH keyed by their own struct, so the
 * increments need no atomics; hist.py adds the CPUs up. */
#ifndef __NETSNOOP_HIST_H
#define __NETSNOOP_HIST_H

#include "netsnoop.h"

#define HIST_SLOTS 32 /* a power of two (see hist_add_scaled) */

struct hist {
	__u64 slots[HIST_SLOTS];
	__u64 count;
	__u64 sum;
};
EXPORT_STRUCT(hist);

/* floor(log2(v)), 0 for v == 0, without loops (the verifier likes it flat). */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xffffffffULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xffff) << 4; v >>= shift; r |= shift;
	shift = (v > 0xff) << 3; v >>= shift; r |= shift;
	shift = (v > 0xf) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

/* The initial value of new histograms. In .bss, not .rodata: the loader reads every
 * .rodata variable as a scalar filter; and too big for the BPF stack next to a key. */
struct hist hist_zero;

/* The histogram under `key` in `map`, created empty on first use. NULL when the map
 * is full: the value is then counted in lost_events, so the loss is reported. */
static __always_inline struct hist *hist_get(void *map, const void *key)
{
	struct hist *h = bpf_map_lookup_elem(map, key);

	if (h)
		return h;
	bpf_map_update_elem(map, key, &hist_zero, BPF_NOEXIST);
	h = bpf_map_lookup_elem(map, key);
	if (!h)
		count_lost(); /* the map is full */
	return h;
}

/* Count `value` in the histogram under `key`: its slot is chosen by value / div (the
 * display unit, e.g. ns -> us with div 1000), while count and sum stay exact in the
 * unit of `value`. Per-CPU map: plain increments. */
static __always_inline void hist_add_scaled(void *map, const void *key, __u64 value, __u32 div)
{
	struct hist *h = hist_get(map, key);
	__u32 slot;

	if (!h)
		return;
	slot = log2_u64(div > 1 ? value / div : value);
	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	/* The mask is a no-op after the clamp, but a bound the verifier always sees:
	 * clang otherwise clamps a copy of slot and indexes with the original. */
	barrier_var(slot);
	h->slots[slot & (HIST_SLOTS - 1)] += 1;
	h->count += 1;
	h->sum += value;
}

static __always_inline void hist_add(void *map, const void *key, __u64 value)
{
	hist_add_scaled(map, key, value, 1);
}

/* A per-CPU hash of histograms: name, key type, capacity. */
#define HIST_MAP(name, key_type, entries)                                               \
	struct {                                                                        \
		__uint(type, BPF_MAP_TYPE_PERCPU_HASH);                                 \
		__uint(max_entries, entries);                                           \
		__type(key, key_type);                                                  \
		__type(value, struct hist);                                             \
	} name SEC(".maps")

#endif /* __NETSNOOP_HIST_H */
