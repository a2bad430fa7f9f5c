// SPDX-License-Identifier: GPL-2.0
/* dns_sock: the DNS messages sockets send and receive, for netsnoop.dns, from
 * socket-level programs: cgroup_skb on the cgroup v2 root, so every socket of every
 * namespace and container, and only what a local socket really sent or was handed.
 *
 * Sent: UDP queries to port 53, and the SYN of a TCP connection to port 53 (user space
 * only reads streams a local socket opened). Received: UDP answers from port 53, and
 * every TCP segment from port 53 that opens the stream (SYN-ACK) or carries bytes,
 * with its sequence number, so user space can put the stream together in order.
 * bpf_skb_load_bytes reads payload wherever it lies (a TCP stream's is in page
 * fragments, which tracepoint programs cannot read). Both programs always let the
 * packet through. Every other packet leaves after the IP header and port words, read
 * in place (the hot path). */
#include "dns.h"

extern void *bpf_cast_to_kern_ctx(void *) __ksym;

static __always_inline __u32 skb_netns(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);

	return packet_netns(skb, BPF_CORE_READ(skb, sk));
}

static __always_inline void dns_packet(struct __sk_buff *ctx, bool rx)
{
	__u8 *data = (__u8 *)(long)ctx->data, *end = (__u8 *)(long)ctx->data_end, *th;
	__u32 l4, tot, hlen, len, cap, seq = 0;
	__u8 flags = 0, proto;
	struct dns_rec *r;
	__u16 family, port;

	if (ctx->protocol == bpf_htons(ETH_P_IP)) {
		if (data + 20 > end || (data[0] >> 4) != 4)
			return;
		proto = data[9];
		l4 = (data[0] & 0xf) * 4;
		tot = (__u16)data[2] << 8 | data[3];
		family = AF_INET;
	} else if (ctx->protocol == bpf_htons(ETH_P_IPV6)) {
		if (data + 40 > end)
			return;
		proto = data[6]; /* extension headers are not followed */
		l4 = 40;
		tot = 40 + ((__u16)data[4] << 8 | data[5]);
		family = AF_INET6;
	} else {
		return;
	}
	if ((proto != IPPROTO_UDP && proto != IPPROTO_TCP) || l4 < 20 || l4 > 60)
		return;
	th = data + l4;
	if (th + 20 > end) /* a UDP header is 8 bytes, but a DNS message follows it */
		return;
	port = rx ? ((__u16)th[0] << 8 | th[1]) : ((__u16)th[2] << 8 | th[3]);
	if (port != DNS_PORT || !family_allowed(family))
		return;

	if (proto == IPPROTO_UDP) {
		hlen = 8;
		len = (__u16)th[4] << 8 | th[5];
		len = len > 8 ? len - 8 : 0;
	} else {
		flags = th[13];
		hlen = (th[12] >> 4) * 4;
		if (hlen < 20 || tot < l4 + hlen)
			return;
		len = tot - l4 - hlen;
		seq = (__u32)th[4] << 24 | (__u32)th[5] << 16 | (__u32)th[6] << 8 | th[7];
		if (rx ? !(flags & TCP_FLAG_SYN) && !len : (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
			return;
		if (flags & TCP_FLAG_SYN)
			len = 0;
	}
	r = dns_scratch(rx);
	if (!r)
		return;
	if (family == AF_INET) {
		__builtin_memcpy(r->h.saddr, data + 12, 4);
		__builtin_memcpy(r->h.daddr, data + 16, 4);
		__builtin_memset(r->h.saddr + 4, 0, 12);
		__builtin_memset(r->h.daddr + 4, 0, 12);
	} else {
		__builtin_memcpy(r->h.saddr, data + 8, 16);
		__builtin_memcpy(r->h.daddr, data + 24, 16);
	}
	dns_head(r, th, rx, proto, family, skb_netns(ctx));
	r->h.seq = seq;
	r->h.wirelen = len;
	r->h.tcp_flags = flags;
	/* the bytes there are: the skb's length counts from the network header */
	cap = ctx->len > l4 + hlen ? ctx->len - l4 - hlen : 0;
	cap = dns_cap(len < cap ? len : cap, rx);
	if (cap && bpf_skb_load_bytes(ctx, l4 + hlen, r->data, cap))
		cap = 0;
	dns_submit(ctx, r, cap);
}

SEC("cgroup_skb/ingress")
int sock_received(struct __sk_buff *ctx)
{
	dns_packet(ctx, true);
	return 1;
}

SEC("cgroup_skb/egress")
int sock_sent(struct __sk_buff *ctx)
{
	dns_packet(ctx, false);
	return 1;
}
