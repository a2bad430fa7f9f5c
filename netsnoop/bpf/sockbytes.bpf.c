// SPDX-License-Identifier: GPL-2.0
/* sockbytes: the final byte counts of every TCP socket that stops, for export's byte
 * counters. The bytes of live sockets are read from sock_diag at scrape time (tcp_info),
 * so nothing runs per send or receive call; what a socket moved is taken here once, at
 * its one change to TCP_CLOSE (traced as the state is stored, right after the socket
 * left the hash tables sock_diag reads).
 *
 * Figures are payload bytes, as tcp_info reports them less the sequence numbers that
 * are no data: sent is bytes_sent less bytes_retrans (every byte once, however often it
 * went out), received is bytes_received less the peer's FIN (counted there as one).
 * User space takes (reads and deletes) the entries every second, adds them to its sums
 * and drops a live socket of the same cookie from the same scrape: see
 * netsnoop.metrics.Bytes. A full table counts as a lost event. */
#include "hooks.h"

struct closed_key {
	__u64 cookie; /* the socket cookie sock_diag reports (0: it never was asked for) */
	__u64 sk;     /* the socket's address: keeps cookie-less sockets apart */
	__u32 netns;
	__u16 lport; /* host order, as user space reads sock_diag's ports */
	__u16 rport;
};
EXPORT_STRUCT(closed_key);

struct closed_bytes {
	__u64 sent;
	__u64 received;
};
EXPORT_STRUCT(closed_bytes);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* as many as closed in a second, not always */
	__type(key, struct closed_key);
	__type(value, struct closed_bytes);
} closed SEC(".maps");

/* What a closing socket moved, as read by each hook kind. */
struct final_counts {
	__u64 sent;
	__u64 retrans;
	__u64 received;
	unsigned long flags;
};

static __always_inline int record(const struct sock *sk, const struct final_counts *c)
{
	struct closed_key key = {};
	struct closed_bytes v, *have;

	v.sent = c->sent - c->retrans;
	v.received = c->received;
	/* tcp_fin() sets SOCK_DONE when the peer's FIN is in, and the FIN advanced
	 * rcv_nxt, so bytes_received, by one */
	if (v.received && (c->flags & (1UL << SOCK_DONE)))
		v.received--;
	if (!v.sent && !v.received)
		return 0; /* a failed connect, a listener, a connection that moved nothing */
	key.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	key.sk = (__u64)sk;
	key.netns = sock_netns(sk);
	/* inet_sport, not skc_num: the port is already released when CLOSE is traced */
	key.lport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	key.rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (bpf_map_update_elem(&closed, &key, &v, BPF_NOEXIST) == 0)
		return 0;
	have = bpf_map_lookup_elem(&closed, &key); /* the same socket closed twice? */
	if (have) {
		__sync_fetch_and_add(&have->sent, v.sent);
		__sync_fetch_and_add(&have->received, v.received);
	} else {
		count_lost(); /* full: more sockets closed within a second than it holds */
	}
	return 0;
}

/* TCP_CLOSE again (close() after a reset or a disconnect) moved no more bytes */
#define CLOSING(oldstate, newstate) ((newstate) == TCP_CLOSE && (oldstate) != TCP_CLOSE)

/* Every variant but tp_btf reads the socket through bpf_probe_read_kernel. */
static __always_inline int probed(const struct sock *sk, int oldstate, int newstate)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	struct final_counts c;

	if (!CLOSING(oldstate, newstate) || !sock_is_tcp(sk))
		return 0;
	c.sent = BPF_CORE_READ(tp, bytes_sent);
	c.retrans = BPF_CORE_READ(tp, bytes_retrans);
	c.received = BPF_CORE_READ(tp, bytes_received);
	c.flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	return record(sk, &c);
}

/* The one that runs on every state change of a storm's connections: its typed socket
 * is read directly, and bpf_skc_to_tcp_sock() both checks for TCP and gives the
 * tcp_sock, with no helper call per field. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(set_state__tp_btf, struct sock *sk, int oldstate, int newstate)
{
	struct final_counts c;
	struct tcp_sock *tp;

	if (!CLOSING(oldstate, newstate))
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	c.sent = tp->bytes_sent;
	c.retrans = tp->bytes_retrans;
	c.received = tp->bytes_received;
	c.flags = sk->__sk_common.skc_flags;
	return record(sk, &c);
}

SEC("tracepoint/sock/inet_sock_set_state")
int set_state__tracepoint(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	return probed((const struct sock *)ctx->skaddr, ctx->oldstate, ctx->newstate);
}

SEC("fentry/tcp_set_state")
int BPF_PROG(set_state__fentry, struct sock *sk, int state)
{
	return probed(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);
}

SEC("kprobe/tcp_set_state")
int BPF_KPROBE(set_state__kprobe, struct sock *sk, int state)
{
	return probed(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);
}
