// SPDX-License-Identifier: GPL-2.0
/* softirqs: time spent in each soft IRQ vector (net_rx, net_tx, timer, ...), as totals
 * or log2 histograms (softirqs). */
#include "hist.h"

struct softirq_key {
	__u32 vec;
};
EXPORT_STRUCT(softirq_key);

/* NR_SOFTIRQS is 10 on every kernel so far; room for more. */
HIST_MAP(softirqs, struct softirq_key, 32);

const volatile __s32 filter_cpu = -1;     /* -c: only this CPU */
const volatile __u32 unit_div = 1000;     /* 1000: microseconds, 1: nanoseconds */

/* When the soft IRQ running on this CPU began (they do not nest on one CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} start SEC(".maps");

static __always_inline bool cpu_allowed(void)
{
	return filter_cpu < 0 || bpf_get_smp_processor_id() == (__u32)filter_cpu;
}

static __always_inline int on_entry(unsigned int vec)
{
	__u32 zero = 0;
	__u64 *ts;

	if (!cpu_allowed())
		return 0;
	ts = bpf_map_lookup_elem(&start, &zero);
	if (ts)
		*ts = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int on_exit(unsigned int vec)
{
	struct softirq_key key = { .vec = vec };
	__u32 zero = 0;
	__u64 *ts, delta;

	if (!cpu_allowed())
		return 0;
	ts = bpf_map_lookup_elem(&start, &zero);
	if (!ts || !*ts)
		return 0; /* entered before tracing began */
	delta = bpf_ktime_get_ns() - *ts;
	*ts = 0;
	/* slots in the display unit; count and sum stay exact (nanoseconds) */
	hist_add_scaled(&softirqs, &key, delta, unit_div);
	return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(entry__tp_btf, unsigned int vec_nr)
{
	return on_entry(vec_nr);
}

SEC("tracepoint/irq/softirq_entry")
int entry__tracepoint(struct trace_event_raw_softirq *ctx)
{
	return on_entry(ctx->vec);
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(exit__tp_btf, unsigned int vec_nr)
{
	return on_exit(vec_nr);
}

SEC("tracepoint/irq/softirq_exit")
int exit__tracepoint(struct trace_event_raw_softirq *ctx)
{
	return on_exit(ctx->vec);
}
