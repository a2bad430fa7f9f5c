// SPDX-License-Identifier: GPL-2.0
/* synbl: the accept (SYN) backlog length of TCP listeners when connections arrive,
 * one log2 histogram per backlog limit (tcpsynbl). Overflows are counted from the
 * kernel's own counters, in user space: a SYN that finds the queue full is freed with
 * no drop reason, so no hook here could see every one. */
#include "hist.h"
#include "where.h"

/* One histogram per listen() backlog limit (sk_max_ack_backlog) and network namespace. */
struct synbl_key {
	__u32 backlog_max;
	__u32 netns;
};
EXPORT_STRUCT(synbl_key);

HIST_MAP(backlog, struct synbl_key, 4096);

static __always_inline bool is_tcp_listener(const struct sock *sk)
{
	return sk && BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_LISTEN && sock_is_tcp(sk) &&
	       family_allowed(BPF_CORE_READ(sk, __sk_common.skc_family));
}

/* A connection was just queued on `sk` for accept(): sample the queue length as it
 * was when the connection arrived (`queued` says whether it is already counted). */
static __always_inline int on_queued(const struct sock *sk, bool queued)
{
	struct synbl_key key = {};
	__u32 len;

	if (!is_tcp_listener(sk))
		return 0;
	key.netns = sock_netns(sk);
	if (!netns_allowed(key.netns))
		return 0;
	len = BPF_CORE_READ(sk, sk_ack_backlog);
	if (queued && len > 0)
		len -= 1;
	key.backlog_max = BPF_CORE_READ(sk, sk_max_ack_backlog);
	hist_add(&backlog, &key, len);
	return 0;
}

/* The listener is woken (sk_data_ready) once per child put on its accept queue; every
 * other socket too, on every segment of data it receives: those leave at once, by a
 * direct read of the typed socket (no helper call). */
SEC("tp_btf/sk_data_ready")
int BPF_PROG(queued__tp_btf, const struct sock *sk)
{
	if (!sk || sk->__sk_common.skc_state != TCP_LISTEN)
		return 0;
	return on_queued(sk, true);
}

SEC("tracepoint/sock/sk_data_ready")
int queued__tracepoint(struct trace_event_raw_sk_data_ready *ctx)
{
	return on_queued((const struct sock *)ctx->skaddr, true);
}

/* Older kernels: the child is about to be queued (v4 and v6 both pass here). */
SEC("kprobe/inet_csk_complete_hashdance")
int BPF_KPROBE(queued__kprobe, struct sock *sk, struct sock *child, struct request_sock *req, bool own_req)
{
	return own_req ? on_queued(sk, false) : 0;
}
