// SPDX-License-Identifier: GPL-2.0
/* dns: the UDP DNS messages this machine sends and receives, so that user space can
 * learn which name each address was the answer for (netsnoop.dns, the --dns columns).
 * The fallback of dns_sock.bpf.c, for hosts without a cgroup v2 hierarchy or kernels
 * that refuse its programs; no TCP here: a stream's payload lies in page fragments,
 * which only socket-level programs can read.
 *
 * Two hooks on every packet of every network namespace, loopback included:
 *   - received (netif_receive_skb): UDP from port 53, the answers;
 *   - sent (net_dev_start_xmit): UDP to port 53, the queries (user space only believes
 *     an answer that matches a query sent from the same socket, with the same ID and
 *     question).
 * Everything else leaves after one read of the IP header and ports (the hot path). The
 * payload is copied from the packet's linear data, where the stack puts a datagram it
 * builds; wire length and copied length both travel, so user space knows when it
 * holds less than the whole message and never guesses the rest. */
#include "dns.h"

/* Where a packet's network header starts, and its protocol. */
struct pkt {
	__u64 l3;
	__u16 proto; /* skb->protocol, network byte order */
};

/* Linear bytes after the first off bytes of the network header. Read with probe reads,
 * off the hot path: they come back as plain numbers, which the verifier lets us
 * compare (the typed loads give pointers it does not). */
static __always_inline __u32 linear_after(const struct sk_buff *skb, bool rx, __u32 off)
{
	__u64 data = (__u64)BPF_CORE_READ(skb, data), l3, end;

	l3 = rx ? data : (__u64)BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, network_header);
	end = data + BPF_CORE_READ(skb, len) - BPF_CORE_READ(skb, data_len);
	return end > l3 + off ? end - (l3 + off) : 0;
}

/* The hot path: the IP header and the ports in one read. Returns the UDP header's
 * offset in the packet, 0 unless the packet is UDP with port 53 on the side asked for (the source
 * when received, the destination when sent); fills the addresses. */
static __always_inline __u32 dns_udp(const struct pkt *p, bool rx, __u8 *addrs)
{
	__u8 h[44];
	__u16 port;

	if (p->proto == bpf_htons(ETH_P_IP)) {
		__u32 ihl;

		if (bpf_probe_read_kernel(h, 24, (void *)p->l3))
			return 0;
		if ((h[0] >> 4) != 4 || h[9] != IPPROTO_UDP)
			return 0;
		if ((h[6] & 0x1f) || h[7]) /* a later fragment: no UDP header in it */
			return 0;
		ihl = (h[0] & 0xf) * 4;
		if (ihl < 20)
			return 0;
		if (ihl == 20)
			port = rx ? ((__u16)h[20] << 8 | h[21]) : ((__u16)h[22] << 8 | h[23]);
		else if (bpf_probe_read_kernel(&port, 2, (void *)(p->l3 + ihl + (rx ? 0 : 2))))
			return 0;
		else
			port = bpf_ntohs(port);
		if (port != DNS_PORT)
			return 0;
		__builtin_memcpy(addrs, &h[12], 4);
		__builtin_memcpy(addrs + 16, &h[16], 4);
		return ihl;
	}
	if (p->proto == bpf_htons(ETH_P_IPV6)) {
		if (bpf_probe_read_kernel(h, 44, (void *)p->l3))
			return 0;
		if (h[6] != IPPROTO_UDP) /* extension headers are not followed */
			return 0;
		port = rx ? ((__u16)h[40] << 8 | h[41]) : ((__u16)h[42] << 8 | h[43]);
		if (port != DNS_PORT)
			return 0;
		__builtin_memcpy(addrs, &h[8], 16);
		__builtin_memcpy(addrs + 16, &h[24], 16);
		return 40;
	}
	return 0;
}

static __always_inline int on_packet(void *ctx, const struct sk_buff *skb, const struct pkt *p, bool rx)
{
	__u8 addrs[32] = {};
	__u8 u[8];
	__u32 udp, len, avail, cap;
	struct dns_rec *r;
	__u16 family;

	udp = dns_udp(p, rx, addrs);
	if (!udp)
		return 0;
	family = p->proto == bpf_htons(ETH_P_IP) ? AF_INET : AF_INET6;
	if (!family_allowed(family) || bpf_probe_read_kernel(u, 8, (void *)(p->l3 + udp)))
		return 0;
	/* the datagram's own length: a first fragment holds only part of it */
	len = (__u16)u[4] << 8 | u[5];
	len = len > 8 ? len - 8 : 0;
	avail = linear_after(skb, rx, udp + 8);
	r = dns_scratch(rx);
	if (!r)
		return 0;
	cap = dns_cap(len < avail ? len : avail, rx);
	if (cap && bpf_probe_read_kernel(r->data, cap, (void *)(p->l3 + udp + 8)))
		cap = 0;
	dns_head(r, u, rx, IPPROTO_UDP, family, dev_netns(BPF_CORE_READ(skb, dev)));
	r->h.seq = 0;
	r->h.wirelen = len;
	r->h.tcp_flags = 0;
	__builtin_memcpy(r->h.saddr, addrs, 16);
	__builtin_memcpy(r->h.daddr, addrs + 16, 16);
	dns_submit(ctx, r, cap);
	return 0;
}

/* Received: the network header is at skb->data (the link header is already pulled). */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(received__tp_btf, struct sk_buff *skb)
{
	struct pkt p;

	p.proto = skb->protocol;
	p.l3 = (__u64)skb->data;
	return on_packet(ctx, skb, &p, true);
}

SEC("tracepoint/net/netif_receive_skb")
int received__tracepoint(struct trace_event_raw_net_dev_template *ctx)
{
	const struct sk_buff *skb = ctx->skbaddr;
	struct pkt p;

	p.proto = BPF_CORE_READ(skb, protocol);
	p.l3 = (__u64)BPF_CORE_READ(skb, data);
	return on_packet(ctx, skb, &p, true);
}

/* Sent: skb->data is at the link header; the network header is where the stack set it
 * (0xffff: none recorded, a packet socket's frame). */
SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(sent__tp_btf, const struct sk_buff *skb, const struct net_device *dev)
{
	struct pkt p;

	if (skb->network_header == 0xffff)
		return 0;
	p.proto = skb->protocol;
	p.l3 = (__u64)skb->head + skb->network_header;
	return on_packet(ctx, skb, &p, false);
}

SEC("tracepoint/net/net_dev_start_xmit")
int sent__tracepoint(struct trace_event_raw_net_dev_start_xmit *ctx)
{
	const struct sk_buff *skb = ctx->skbaddr;
	__u16 nh = BPF_CORE_READ(skb, network_header);
	struct pkt p;

	if (nh == 0xffff)
		return 0;
	p.proto = BPF_CORE_READ(skb, protocol);
	p.l3 = (__u64)BPF_CORE_READ(skb, head) + nh;
	return on_packet(ctx, skb, &p, false);
}
