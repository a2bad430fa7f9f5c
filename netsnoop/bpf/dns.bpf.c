// SPDX-License-Identifier: GPL-2.0
/* dns: the DNS messages this machine sends and receives, so that user space can learn
 * which name each address was the answer for (netsnoop.dns, the --dns columns).
 *
 * Two hooks on every packet of every network namespace, loopback included:
 *   - received (netif_receive_skb): what comes from port 53 -- UDP answers, and TCP
 *     segments (the SYN-ACK that starts a stream, and the data that carries answers);
 *   - sent (net_dev_start_xmit): what goes to port 53 -- UDP queries (user space only
 *     believes an answer that matches a query sent from the same socket, with the same
 *     ID and question), and the SYN of a TCP connection to a DNS server.
 * Everything else leaves after reading the IP and port words (the hot path). The
 * payload is copied from the packet's linear data only (bpf_probe_read_kernel cannot
 * follow page fragments); wire length and copied length both travel, so user space
 * knows when it holds less than the whole message and never guesses the rest. */
#include "netsnoop.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define DNS_PORT 53
#define TCP_FLAG_SYN 0x02

/* Payload bytes copied, at most (powers of two: the copy's length is masked, which the
 * verifier follows): a query needs its header and question (12 + 255 + 4); an answer
 * the 1232 bytes that EDNS senders keep to, plus TCP's length prefix, and more. */
#define QUERY_CAP 512
#define ANSWER_CAP 2048

enum dns_kind {
	DNS_SENT = 1,     /* to port 53: a query, or a TCP SYN */
	DNS_RECEIVED = 2, /* from port 53: an answer, or a TCP segment */
};

/* The record's header; caplen payload bytes follow it. */
struct dns_msg {
	__u64 ts_ns;
	__u32 netns;   /* inode of the device's network namespace */
	__u32 seq;     /* TCP: sequence number of the first payload byte (of the SYN) */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 caplen;  /* payload bytes copied after this header */
	__u16 wirelen; /* payload bytes the message has in this packet (UDP: in the datagram) */
	__u8 kind;     /* enum dns_kind */
	__u8 proto;    /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 tcp_flags;
	__u8 pad[3];
	__u8 saddr[16];
	__u8 daddr[16];
};
EXPORT_STRUCT(dns_msg);

struct dns_query_rec {
	struct dns_msg h;
	__u8 data[QUERY_CAP];
};

struct dns_answer_rec {
	struct dns_msg h;
	__u8 data[ANSWER_CAP];
};

/* Where a packet's network header starts, and where its linear data ends. */
struct pkt {
	__u64 l3;
	__u64 end;
	__u16 proto; /* skb->protocol, network byte order */
};

struct l4 {
	__u64 hdr;     /* transport header */
	__u16 sport;
	__u16 dport;
	__u16 wirelen; /* transport payload in this packet */
	__u8 proto;
	__u8 hlen;     /* transport header length */
};

static __always_inline __u32 dev_netns(const struct sk_buff *skb)
{
	return BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
}

/* The hot path: IP header and ports in one read; false unless UDP/TCP and port 53 on
 * the side asked for (source when received, destination when sent). */
static __always_inline bool dns_ports(const struct pkt *p, bool rx, struct l4 *l, __u8 *addrs)
{
	__u8 h[44];
	__u16 port;

	if (p->proto == bpf_htons(ETH_P_IP)) {
		__u32 ihl;
		__u16 tot, frag;

		if (bpf_probe_read_kernel(h, 24, (void *)p->l3))
			return false;
		if ((h[0] >> 4) != 4)
			return false;
		l->proto = h[9];
		if (l->proto != IPPROTO_UDP && l->proto != IPPROTO_TCP)
			return false;
		frag = ((__u16)h[6] << 8 | h[7]) & 0x1fff;
		if (frag) /* a later fragment has no transport header */
			return false;
		ihl = (h[0] & 0xf) * 4;
		if (ihl < 20)
			return false;
		l->hdr = p->l3 + ihl;
		if (ihl == 20)
			port = rx ? ((__u16)h[20] << 8 | h[21]) : ((__u16)h[22] << 8 | h[23]);
		else if (bpf_probe_read_kernel(&port, 2, (void *)(l->hdr + (rx ? 0 : 2))))
			return false;
		else
			port = bpf_ntohs(port);
		if (port != DNS_PORT)
			return false;
		tot = (__u16)h[2] << 8 | h[3];
		l->wirelen = tot > ihl ? tot - ihl : 0; /* transport header subtracted below */
		__builtin_memcpy(addrs, &h[12], 4);
		__builtin_memcpy(addrs + 16, &h[16], 4);
		return true;
	}
	if (p->proto == bpf_htons(ETH_P_IPV6)) {
		if (bpf_probe_read_kernel(h, 44, (void *)p->l3))
			return false;
		l->proto = h[6]; /* extension headers are not followed */
		if (l->proto != IPPROTO_UDP && l->proto != IPPROTO_TCP)
			return false;
		port = rx ? ((__u16)h[40] << 8 | h[41]) : ((__u16)h[42] << 8 | h[43]);
		if (port != DNS_PORT)
			return false;
		l->hdr = p->l3 + 40;
		l->wirelen = (__u16)h[4] << 8 | h[5];
		__builtin_memcpy(addrs, &h[8], 16);
		__builtin_memcpy(addrs + 16, &h[24], 16);
		return true;
	}
	return false;
}

static __always_inline int on_packet(const struct sk_buff *skb, const struct pkt *p, bool rx)
{
	__u8 addrs[32] = {};
	struct l4 l = {};
	__u8 t[20];
	__u32 seq = 0, cap, avail, len;
	__u8 flags = 0;
	__u64 payload;

	if (!dns_ports(p, rx, &l, addrs))
		return 0;
	if (l.proto == IPPROTO_UDP) {
		if (bpf_probe_read_kernel(t, 8, (void *)l.hdr))
			return 0;
		l.hlen = 8;
		/* the datagram's own length: a first fragment holds only part of it */
		len = (__u16)t[4] << 8 | t[5];
		l.wirelen = len > 8 ? len - 8 : 0;
	} else {
		if (bpf_probe_read_kernel(t, 20, (void *)l.hdr))
			return 0;
		l.hlen = (t[12] >> 4) * 4;
		if (l.hlen < 20)
			return 0;
		l.wirelen = l.wirelen > l.hlen ? l.wirelen - l.hlen : 0;
		seq = (__u32)t[4] << 24 | (__u32)t[5] << 16 | (__u32)t[6] << 8 | t[7];
		flags = t[13];
		/* a TCP segment matters when it opens a stream or carries its bytes */
		if (!(flags & TCP_FLAG_SYN) && !l.wirelen)
			return 0;
		if (!rx && !(flags & TCP_FLAG_SYN))
			return 0;
	}
	l.sport = (__u16)t[0] << 8 | t[1];
	l.dport = (__u16)t[2] << 8 | t[3];
	if (!family_allowed(p->proto == bpf_htons(ETH_P_IP) ? AF_INET : AF_INET6))
		return 0;
	payload = l.hdr + l.hlen;
	avail = p->end > payload ? p->end - payload : 0;
	cap = l.wirelen < avail ? l.wirelen : avail;

	if (l.proto == IPPROTO_TCP && (flags & TCP_FLAG_SYN))
		cap = 0;

	struct dns_msg *h;

	if (rx) {
		struct dns_answer_rec *r = reserve_event(sizeof(*r));

		if (!r)
			return 0;
		h = &r->h;
		if (cap > ANSWER_CAP - 1)
			cap = ANSWER_CAP - 1;
		barrier_var(cap);
		cap &= ANSWER_CAP - 1;
		if (cap && bpf_probe_read_kernel(r->data, cap, (void *)payload))
			cap = 0;
	} else {
		struct dns_query_rec *r = reserve_event(sizeof(*r));

		if (!r)
			return 0;
		h = &r->h;
		if (cap > QUERY_CAP - 1)
			cap = QUERY_CAP - 1;
		barrier_var(cap);
		cap &= QUERY_CAP - 1;
		if (cap && bpf_probe_read_kernel(r->data, cap, (void *)payload))
			cap = 0;
	}
	h->ts_ns = bpf_ktime_get_ns();
	h->netns = dev_netns(skb);
	h->seq = seq;
	h->family = p->proto == bpf_htons(ETH_P_IP) ? AF_INET : AF_INET6;
	h->sport = l.sport;
	h->dport = l.dport;
	h->caplen = cap;
	h->wirelen = l.wirelen;
	h->kind = rx ? DNS_RECEIVED : DNS_SENT;
	h->proto = l.proto;
	h->tcp_flags = flags;
	h->pad[0] = h->pad[1] = h->pad[2] = 0;
	__builtin_memcpy(h->saddr, addrs, 16);
	__builtin_memcpy(h->daddr, addrs + 16, 16);
	bpf_ringbuf_submit(h, 0);
	return 0;
}

/* Received: the network header is at skb->data (the link header is already pulled). */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(received__tp_btf, struct sk_buff *skb)
{
	struct pkt p;

	p.proto = skb->protocol;
	p.l3 = (__u64)skb->data;
	p.end = p.l3 + (skb->len - skb->data_len);
	return on_packet(skb, &p, true);
}

SEC("tracepoint/net/netif_receive_skb")
int received__tracepoint(struct trace_event_raw_net_dev_template *ctx)
{
	const struct sk_buff *skb = ctx->skbaddr;
	struct pkt p;

	p.proto = BPF_CORE_READ(skb, protocol);
	p.l3 = (__u64)BPF_CORE_READ(skb, data);
	p.end = p.l3 + (BPF_CORE_READ(skb, len) - BPF_CORE_READ(skb, data_len));
	return on_packet(skb, &p, true);
}

/* Sent: skb->data is at the link header; the network header is where the stack set it. */
static __always_inline bool sent_pkt(__u64 head, __u64 data, __u16 nh, __u32 len, __u32 data_len,
				     __u16 proto, struct pkt *p)
{
	if (nh == 0xffff) /* no network header recorded (a packet socket's frame) */
		return false;
	p->proto = proto;
	p->l3 = head + nh;
	p->end = data + (len - data_len);
	return true;
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(sent__tp_btf, const struct sk_buff *skb, const struct net_device *dev)
{
	struct pkt p;

	if (!sent_pkt((__u64)skb->head, (__u64)skb->data, skb->network_header, skb->len, skb->data_len,
		      skb->protocol, &p))
		return 0;
	return on_packet(skb, &p, false);
}

SEC("tracepoint/net/net_dev_start_xmit")
int sent__tracepoint(struct trace_event_raw_net_dev_start_xmit *ctx)
{
	const struct sk_buff *skb = ctx->skbaddr;
	struct pkt p;

	if (!sent_pkt((__u64)BPF_CORE_READ(skb, head), (__u64)BPF_CORE_READ(skb, data),
		      BPF_CORE_READ(skb, network_header), BPF_CORE_READ(skb, len),
		      BPF_CORE_READ(skb, data_len), BPF_CORE_READ(skb, protocol), &p))
		return 0;
	return on_packet(skb, &p, false);
}
