// SPDX-License-Identifier: GPL-2.0
/* synbl: the accept (SYN) backlog length of TCP listeners when connections arrive,
 * one log2 histogram per backlog limit, and the connections that overflowed it
 * (tcpsynbl). */
#include "hist.h"

/* One histogram per listen() backlog limit (sk_max_ack_backlog). */
struct synbl_key {
	__u32 backlog_max;
};
EXPORT_STRUCT(synbl_key);

HIST_MAP(backlog, struct synbl_key, 4096);

/* Final ACKs dropped because the listener's accept queue was full, per limit. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct synbl_key);
	__type(value, __u64);
} overflows SEC(".maps");

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
	len = BPF_CORE_READ(sk, sk_ack_backlog);
	if (queued && len > 0)
		len -= 1;
	key.backlog_max = BPF_CORE_READ(sk, sk_max_ack_backlog);
	hist_add(&backlog, &key, len);
	return 0;
}

/* A packet was freed with `reason`; count it when the listener `sk` dropped it for a
 * full accept queue. */
static __always_inline int on_drop(const struct sock *sk, __u32 reason)
{
	struct synbl_key key = {};
	__u64 one = 1, *n;

	if (reason != bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_TCP_LISTEN_OVERFLOW))
		return 0;
	if (!is_tcp_listener(sk))
		return 0;
	key.backlog_max = BPF_CORE_READ(sk, sk_max_ack_backlog);
	n = bpf_map_lookup_elem(&overflows, &key);
	if (n)
		*n += 1;
	else
		bpf_map_update_elem(&overflows, &key, &one, BPF_NOEXIST);
	return 0;
}

/* The listener is woken (sk_data_ready) once per child put on its accept queue. */
SEC("tp_btf/sk_data_ready")
int BPF_PROG(queued__tp_btf, const struct sock *sk)
{
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

SEC("tp_btf/kfree_skb")
int BPF_PROG(overflow__tp_btf, struct sk_buff *skb, void *location, enum skb_drop_reason reason,
	     struct sock *rx_sk)
{
	return on_drop(rx_sk, reason);
}

SEC("tracepoint/skb/kfree_skb")
int overflow__tracepoint(struct trace_event_raw_kfree_skb *ctx)
{
	if (!bpf_core_field_exists(ctx->rx_sk))
		return 0;
	return on_drop((const struct sock *)BPF_CORE_READ(ctx, rx_sk), BPF_CORE_READ(ctx, reason));
}
