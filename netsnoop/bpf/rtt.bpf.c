// SPDX-License-Identifier: GPL-2.0
/* rtt: log2 histograms of the smoothed TCP round-trip time of established sockets,
 * sampled on every segment they receive (tcprtt). */
#include "hist.h"
#include "where.h"

enum rtt_key_by { KEY_NONE, KEY_LADDR, KEY_RADDR };
EXPORT_ENUM(rtt_key_by);

/* One histogram per local or remote address (-b/-B) and per network namespace
 * (by_netns), or a single one (all zero). */
struct rtt_key {
	__u8 addr[16];
	__u16 family;
	__u16 pad;
	__u32 netns;
};
EXPORT_STRUCT(rtt_key);

HIST_MAP(rtts, struct rtt_key, 10240);

const volatile __u8 key_by = KEY_NONE;
const volatile __u8 by_netns = 0;        /* 1: one histogram per network namespace */
const volatile __u32 unit_div = 1;       /* 1: microseconds, 1000: milliseconds */
/* -a / -A: only this local / remote address (family 0 = no filter). */
const volatile __u16 filter_laddr_family = 0;
const volatile __u8 filter_laddr[16] = {};
const volatile __u16 filter_raddr_family = 0;
const volatile __u8 filter_raddr[16] = {};

static __always_inline bool addr_allowed(__u16 want_family, const volatile __u8 *want, __u16 family,
					 const __u8 *addr)
{
	int len = family == AF_INET6 ? 16 : 4;

	if (!want_family)
		return true;
	if (want_family != family)
		return false;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (i < len && want[i] != addr[i])
			return false;
	}
	return true;
}

/* Whether a filter or the key reads the socket's ends. The settings are constants of
 * the loaded program: the verifier drops the path not taken. */
static __always_inline bool tuple_needed(void)
{
	return key_by != KEY_NONE || filter_family || filter_lports[0] || filter_rports[0] || filter_ports[0] ||
	       filter_laddr_family || filter_raddr_family;
}

/* The ends against the filters, and into the key as key_by asks; false: filtered out. */
static __always_inline bool keyed_by_ends(const struct sock *sk, struct rtt_key *key)
{
	struct sock_tuple t;

	read_sock_tuple(sk, &t);
	if (!tuple_allowed(&t))
		return false;
	if (!addr_allowed(filter_laddr_family, filter_laddr, t.family, t.saddr) ||
	    !addr_allowed(filter_raddr_family, filter_raddr, t.family, t.daddr))
		return false;
	if (key_by == KEY_LADDR) {
		key->family = t.family;
		__builtin_memcpy(key->addr, t.saddr, 16);
	} else if (key_by == KEY_RADDR) {
		key->family = t.family;
		__builtin_memcpy(key->addr, t.daddr, 16);
	}
	return true;
}

/* Whether the key or a filter reads the socket's namespace. */
#define NETNS_NEEDED (by_netns || filter_netns[0])

/* An established socket received a segment: sample its smoothed RTT (srtt_us holds 8x
 * the smoothed RTT in microseconds; 0 means no sample yet). netns: the socket's, read
 * by the caller only when NETNS_NEEDED. */
static __always_inline int on_segment(const struct sock *sk, __u32 srtt_us, __u32 netns)
{
	struct rtt_key key = {};
	__u32 srtt = srtt_us >> 3;

	if (!srtt)
		return 0;
	if (NETNS_NEEDED) {
		if (!netns_allowed(netns))
			return 0;
		if (by_netns)
			key.netns = netns;
	}
	/* export's histogram per namespace reads no ends: this runs on every segment */
	if (tuple_needed() && !keyed_by_ends(sk, &key))
		return 0;
	hist_add_scaled(&rtts, &key, srtt, unit_div);
	return 0;
}

/* The same through bpf_probe_read_kernel, for the hooks whose socket is untyped. */
static __always_inline int on_segment_probed(const struct sock *sk)
{
	__u32 srtt_us = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us);

	return on_segment(sk, srtt_us, srtt_us && NETNS_NEEDED ? sock_netns(sk) : 0);
}

/* tcp:tcp_probe fires at the top of tcp_rcv_established(), i.e. for every segment an
 * established socket receives (pure ACKs included, loopback included): where bcc's
 * kprobe sits. tcp:tcp_rcv_space_adjust would only fire when the application reads,
 * so a bulk sender, which receives nothing but ACKs, would never be sampled. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(segment__tp_btf, struct sock *sk, const struct sk_buff *skb)
{
	/* the typed socket is read directly: no helper call per field */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	if (!tp)
		return 0;
	return on_segment(sk, tp->srtt_us, NETNS_NEEDED ? sk->__sk_common.skc_net.net->ns.inum : 0);
}

SEC("tracepoint/tcp/tcp_probe")
int segment__tracepoint(struct trace_event_raw_tcp_probe *ctx)
{
	return on_segment_probed((const struct sock *)ctx->skaddr);
}

SEC("kprobe/tcp_rcv_established")
int BPF_KPROBE(segment__kprobe, struct sock *sk)
{
	return on_segment_probed(sk);
}
