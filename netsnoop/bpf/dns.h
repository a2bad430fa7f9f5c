/* What the DNS watchers (dns.bpf.c: UDP, dns_tcp.bpf.c: TCP) hand to netsnoop.dns: one
 * record per DNS packet, a header then the payload bytes copied. */
#ifndef __NETSNOOP_DNS_H
#define __NETSNOOP_DNS_H

#include "netsnoop.h"

#define DNS_PORT 53

/* Payload bytes copied, at most: a query needs its header and question (12 + 255 + 4);
 * an answer the 1232 bytes EDNS senders keep to, TCP's length prefix, and more (one
 * less than a power of two: the copy's length is masked, which the verifier follows). */
#define QUERY_CAP 272
#define ANSWER_CAP 2048

enum dns_kind {
	DNS_SENT = 1,     /* to port 53: a UDP query, or the SYN of a TCP connection */
	DNS_RECEIVED = 2, /* from port 53: a UDP answer, or a TCP segment */
};
EXPORT_ENUM(dns_kind);

/* The record's header; caplen payload bytes follow it. */
struct dns_msg {
	__u64 ts_ns;
	__u32 netns;   /* inode of the network namespace it was seen in */
	__u32 seq;     /* TCP: sequence number of the first payload byte (of the SYN) */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 caplen;  /* payload bytes copied after this header */
	__u16 wirelen; /* payload bytes in this packet (UDP: in the whole datagram) */
	__u8 kind;     /* enum dns_kind */
	__u8 proto;    /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 tcp_flags;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};
EXPORT_STRUCT(dns_msg);

/* A record as it is built; only the header and caplen bytes go into the ring (most
 * answers take a few hundred bytes there, not the whole buffer). */
struct dns_rec {
	struct dns_msg h;
	__u8 data[ANSWER_CAP];
};

/* Per CPU, one slot per direction: a receive can interrupt a send on the same CPU (the
 * softirq at the end of an interrupt), but a hook never runs inside itself. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct dns_rec);
} scratch SEC(".maps");

static __always_inline struct dns_rec *dns_scratch(bool rx)
{
	__u32 slot = rx;

	return bpf_map_lookup_elem(&scratch, &slot);
}

/* The header fields both watchers fill alike: the ends' ports from the first four bytes
 * of the UDP or TCP header th, the direction, the protocol, the family and namespace. */
static __always_inline void dns_head(struct dns_rec *r, const __u8 *th, bool rx, __u8 proto, __u16 family,
				     __u32 netns)
{
	r->h.netns = netns;
	r->h.family = family;
	r->h.sport = (__u16)th[0] << 8 | th[1];
	r->h.dport = (__u16)th[2] << 8 | th[3];
	r->h.kind = rx ? DNS_RECEIVED : DNS_SENT;
	r->h.proto = proto;
}

/* Copy length for a record: at most what the direction keeps, masked for the verifier. */
static __always_inline __u32 dns_cap(__u32 len, bool rx)
{
	if (len > (rx ? ANSWER_CAP - 1 : QUERY_CAP))
		len = rx ? ANSWER_CAP - 1 : QUERY_CAP;
	barrier_var(len);
	return len & (ANSWER_CAP - 1);
}

/* Hand the header and the first cap payload bytes over. */
static __always_inline void dns_submit(void *ctx, struct dns_rec *r, __u32 cap)
{
	cap &= ANSWER_CAP - 1;
	r->h.caplen = cap;
	r->h.pad = 0;
	r->h.ts_ns = bpf_ktime_get_ns();
	output_event(ctx, r, sizeof(r->h) + cap);
}

#endif /* __NETSNOOP_DNS_H */
