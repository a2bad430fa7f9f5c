// SPDX-License-Identifier: GPL-2.0
/* dns_tcp: DNS over TCP for netsnoop.dns, from socket-level programs (cgroup_skb on the
 * cgroup v2 root, so every socket of every namespace and container).
 *
 * A TCP stream's payload usually lies in page fragments (the sender's stack fills pages,
 * and veth and loopback hand the same buffer over), which a tracepoint program cannot
 * read; bpf_skb_load_bytes can. Sent: the SYN of a connection to port 53 (user space
 * only reads streams a local socket opened). Received: every segment from port 53 that
 * opens the stream (SYN-ACK) or carries bytes, with its sequence number, so user space
 * can put the stream together in order. Both programs always let the packet through.
 * Every other packet leaves after the IP and TCP header words, read in place. */
#include "dns.h"

extern void *bpf_cast_to_kern_ctx(void *) __ksym;

static __always_inline __u32 skb_netns(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	__u32 inum = BPF_CORE_READ(skb, sk, __sk_common.skc_net.net, ns.inum);

	return inum ? inum : BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
}

static __always_inline void tcp_segment(struct __sk_buff *ctx, bool rx)
{
	__u8 *data = (__u8 *)(long)ctx->data, *end = (__u8 *)(long)ctx->data_end, *th;
	__u32 l4, tot, hlen, len, cap;
	__u8 addrs[32] = {}, flags;
	struct dns_rec *r;
	__u16 family, port;

	if (ctx->protocol == bpf_htons(ETH_P_IP)) {
		if (data + 20 > end || data[9] != IPPROTO_TCP || (data[0] >> 4) != 4)
			return;
		l4 = (data[0] & 0xf) * 4;
		tot = (__u16)data[2] << 8 | data[3];
		family = AF_INET;
		__builtin_memcpy(addrs, data + 12, 4);
		__builtin_memcpy(addrs + 16, data + 16, 4);
	} else if (ctx->protocol == bpf_htons(ETH_P_IPV6)) {
		if (data + 40 > end || data[6] != IPPROTO_TCP) /* extension headers are not followed */
			return;
		l4 = 40;
		tot = 40 + ((__u16)data[4] << 8 | data[5]);
		family = AF_INET6;
		__builtin_memcpy(addrs, data + 8, 16);
		__builtin_memcpy(addrs + 16, data + 24, 16);
	} else {
		return;
	}
	if (l4 < 20 || l4 > 60)
		return;
	th = data + l4;
	if (th + 20 > end)
		return;
	port = rx ? ((__u16)th[0] << 8 | th[1]) : ((__u16)th[2] << 8 | th[3]);
	if (port != DNS_PORT || !family_allowed(family))
		return;
	flags = th[13];
	hlen = (th[12] >> 4) * 4;
	if (hlen < 20 || tot < l4 + hlen)
		return;
	len = tot - l4 - hlen;
	if (rx ? !(flags & TCP_FLAG_SYN) && !len : (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return;
	r = dns_scratch(rx);
	if (!r)
		return;
	r->h.netns = skb_netns(ctx);
	r->h.seq = (__u32)th[4] << 24 | (__u32)th[5] << 16 | (__u32)th[6] << 8 | th[7];
	r->h.family = family;
	r->h.sport = (__u16)th[0] << 8 | th[1];
	r->h.dport = (__u16)th[2] << 8 | th[3];
	r->h.wirelen = len;
	r->h.kind = rx ? DNS_RECEIVED : DNS_SENT;
	r->h.proto = IPPROTO_TCP;
	r->h.tcp_flags = flags;
	__builtin_memcpy(r->h.saddr, addrs, 16);
	__builtin_memcpy(r->h.daddr, addrs + 16, 16);
	cap = rx && !(flags & TCP_FLAG_SYN) ? dns_cap(len, rx) : 0;
	if (cap && bpf_skb_load_bytes(ctx, l4 + hlen, r->data, cap))
		cap = 0;
	dns_submit(r, cap);
}

SEC("cgroup_skb/ingress")
int tcp_received(struct __sk_buff *ctx)
{
	tcp_segment(ctx, true);
	return 1;
}

SEC("cgroup_skb/egress")
int tcp_sent(struct __sk_buff *ctx)
{
	tcp_segment(ctx, false);
	return 1;
}
