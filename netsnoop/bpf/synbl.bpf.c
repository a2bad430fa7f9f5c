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

/* One sample: the queue length a new connection found on a listener of namespace netns
 * whose listen() backlog is backlog_max. */
static __always_inline int sample(__u32 netns, __u32 len, __u32 backlog_max)
{
	struct synbl_key key = {.backlog_max = backlog_max, .netns = netns};

	if (!netns_allowed(netns))
		return 0;
	hist_add(&backlog, &key, len);
	return 0;
}

/* A connection was just queued on `sk` for accept(): sample the queue length as it
 * was when the connection arrived (`queued` says whether it is already counted). */
static __always_inline int on_queued(const struct sock *sk, bool queued)
{
	__u32 len;

	if (!is_tcp_listener(sk))
		return 0;
	len = BPF_CORE_READ(sk, sk_ack_backlog);
	if (queued && len > 0)
		len -= 1;
	return sample(sock_netns(sk), len, BPF_CORE_READ(sk, sk_max_ack_backlog));
}

/* The listener is woken (sk_data_ready) once per child put on its accept queue; every
 * other socket too, on every segment of data it receives. The typed socket is read
 * directly (no helper call per field), so those leave at the cost of one load. */
SEC("tp_btf/sk_data_ready")
int BPF_PROG(queued__tp_btf, const struct sock *sk)
{
	__u32 len;

	if (!sk || sk->__sk_common.skc_state != TCP_LISTEN || sk->sk_protocol != IPPROTO_TCP ||
	    !family_allowed(sk->__sk_common.skc_family))
		return 0;
	len = sk->sk_ack_backlog;
	if (len > 0)
		len -= 1; /* the new connection is counted already */
	return sample(sk->__sk_common.skc_net.net->ns.inum, len, sk->sk_max_ack_backlog);
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
