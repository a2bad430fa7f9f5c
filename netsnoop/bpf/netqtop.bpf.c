// SPDX-License-Identifier: GPL-2.0
/* netqtop: packets and bytes per TX/RX queue of one network interface, with packet
 * sizes in fixed buckets (netqtop). Counted in per-CPU maps that user space reads
 * and clears every interval. */
#include "netsnoop.h"

/* bcc netqtop's size buckets: [0, 64) [64, 512) [512, 2K) [2K, 16K) [16K, ...) */
#define NR_SIZES 5

struct queue_key {
	__u16 queue;
	__u8 rx;
	__u8 pad;
};
EXPORT_STRUCT(queue_key);

struct queue_stats {
	__u64 bytes;
	__u64 packets;
	__u64 sizes[NR_SIZES];
};
EXPORT_STRUCT(queue_stats);

/* ifindex is only unique inside a network namespace, so both are matched. */
const volatile __u32 filter_ifindex = 0;
const volatile __u32 filter_netns = 0; /* inode of the namespace, 0 = any */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); /* up to 2048 queues each way */
	__type(key, struct queue_key);
	__type(value, struct queue_stats);
} stats SEC(".maps");

static __always_inline int size_bucket(__u32 len)
{
	if (len < 64)
		return 0;
	if (len < 512)
		return 1;
	if (len < 2048)
		return 2;
	if (len < 16384)
		return 3;
	return 4;
}

static __always_inline int count(const struct sk_buff *skb, const struct net_device *dev, bool rx)
{
	struct queue_key key = { .rx = rx };
	struct queue_stats *s, zero = {};
	__u32 len;
	int b;

	if (BPF_CORE_READ(dev, ifindex) != filter_ifindex)
		return 0;
	if (filter_netns && dev_netns(dev) != filter_netns)
		return 0;
	key.queue = BPF_CORE_READ(skb, queue_mapping);
	if (rx) /* a recorded RX queue is stored plus one; 0 means none recorded */
		key.queue = key.queue ? key.queue - 1 : 0;
	len = BPF_CORE_READ(skb, len);

	s = bpf_map_lookup_elem(&stats, &key);
	if (!s) {
		bpf_map_update_elem(&stats, &key, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&stats, &key);
		if (!s)
			return 0;
	}
	s->bytes += len;
	s->packets += 1;
	b = size_bucket(len);
	if (b >= 0 && b < NR_SIZES)
		s->sizes[b] += 1;
	return 0;
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(xmit__tp_btf, const struct sk_buff *skb, const struct net_device *dev)
{
	return count(skb, dev, false);
}

SEC("tracepoint/net/net_dev_start_xmit")
int xmit__tracepoint(struct trace_event_raw_net_dev_start_xmit *ctx)
{
	const struct sk_buff *skb = ctx->skbaddr;

	return count(skb, BPF_CORE_READ(skb, dev), false);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(receive__tp_btf, struct sk_buff *skb)
{
	return count(skb, BPF_CORE_READ(skb, dev), true);
}

SEC("tracepoint/net/netif_receive_skb")
int receive__tracepoint(struct trace_event_raw_net_dev_template *ctx)
{
	const struct sk_buff *skb = ctx->skbaddr;

	return count(skb, BPF_CORE_READ(skb, dev), true);
}
