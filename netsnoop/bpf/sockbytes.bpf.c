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

static __always_inline int on_set_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	struct closed_key key = {};
	struct closed_bytes v, *have;
	unsigned long flags;

	/* TCP_CLOSE again (close() after a reset or a disconnect) moved no more bytes */
	if (newstate != TCP_CLOSE || oldstate == TCP_CLOSE || !sock_is_tcp(sk))
		return 0;
	v.sent = BPF_CORE_READ(tp, bytes_sent) - BPF_CORE_READ(tp, bytes_retrans);
	v.received = BPF_CORE_READ(tp, bytes_received);
	flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	/* tcp_fin() sets SOCK_DONE when the peer's FIN is in, and the FIN advanced
	 * rcv_nxt, so bytes_received, by one */
	if (v.received && (flags & (1UL << SOCK_DONE)))
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

SET_STATE_HOOKS(on_set_state)
