// SPDX-License-Identifier: GPL-2.0
/* retrans: TCP retransmits, SYN-ACK retransmits and (where a kprobe can reach
 * tcp_send_loss_probe) tail loss probes, with the socket's owner and network
 * namespace, as events or counted per namespace and flow (tcpretrans). */
#include "hooks.h"
#include "owner.h"

enum retrans_type { RETRANSMIT = 1, TLP = 2 };
EXPORT_ENUM(retrans_type);

struct event {
	__u64 ts_ns;
	__u64 cgroup; /* the owner's cgroup v2 id, 0 if none is known */
	__u32 pid; /* the socket's owner (sock_owners), 0 if none is known */
	__u32 seq;
	__u32 segs; /* segments this retransmit sent (tcp_skb_pcount), 0 for a TLP row */
	__u32 netns; /* the socket's network namespace (inode) */
	char comm[TASK_COMM_LEN];
	struct sock_tuple t; /* decoded flat: saddr/sport local, daddr/dport remote */
	__u8 state;
	__u8 type; /* RETRANSMIT or TLP */
};
EXPORT_STRUCT(event);

struct flow_key {
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__u32 netns;
};
EXPORT_STRUCT(flow_key);

/* -c: count segments per flow here instead of sending events */
const volatile __u8 count_only = 0;
/* -l: report tail loss probes (the hook is attached whenever the kernel allows it) */
const volatile __u8 with_tlp = 0;

COUNT_MAP(counts, struct flow_key, 16384); /* segments per flow */

static __always_inline void count_flow(const struct sock_tuple *t, __u32 netns, __u32 segs)
{
	struct flow_key key = {.netns = netns};

	__builtin_memcpy(key.laddr, t->saddr, 16);
	__builtin_memcpy(key.raddr, t->daddr, 16);
	key.family = t->family;
	key.lport = t->sport;
	key.rport = t->dport;
	count_key_by(&counts, &key, segs);
}

static __always_inline int report(void *ctx, const struct sock *sk, const struct sock_tuple *t, __u8 state, __u8 type,
				  __u32 seq, __u32 segs)
{
	const struct sock_owner *o;
	struct event *e;
	__u32 netns;

	if (!tuple_allowed(t))
		return 0;
	netns = sock_netns(sk);
	if (!sock_passes(sk, netns, count_only, &o))
		return 0;
	if (count_only) {
		if (segs) /* a loss probe row sends nothing itself */
			count_flow(t, netns, segs);
		return 0;
	}
	e = reserve_event(sizeof(*e));
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	owner_copy(o, &e->pid, e->comm, &e->cgroup);
	e->netns = netns;
	e->seq = seq;
	e->segs = segs;
	e->t = *t;
	e->state = state;
	e->type = type;
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

/* A buffer of data (or a SYN) sent again. Under GSO/TSO one buffer carries many
 * segments: the kernel counts them as tcp_skb_pcount(skb), the tcp_gso_segs of the
 * skb's TCP control block (skb->cb), and adds that to TcpRetransSegs; so do we. */
static __always_inline int on_retransmit(void *ctx, const struct sock *sk, const struct sk_buff *skb)
{
	const struct tcp_skb_cb *cb;
	struct sock_tuple t;
	__u32 seq = 0;
	__u16 segs = 0;

	if (!sk)
		return 0;
	read_sock_tuple(sk, &t);
	if (skb) {
		cb = (const struct tcp_skb_cb *)&skb->cb;
		bpf_core_read(&seq, sizeof(seq), &cb->seq);
		bpf_core_read(&segs, sizeof(segs), &cb->tcp_gso_segs);
	}
	return report(ctx, sk, &t, BPF_CORE_READ(sk, __sk_common.skc_state), RETRANSMIT, seq, segs ? segs : 1);
}

/* A SYN-ACK sent again: the 4-tuple lives in the request sock, the owner is the
 * listener's. */
static __always_inline int on_synack(void *ctx, const struct sock *listener, const struct request_sock *req)
{
	struct sock_tuple t;

	read_req_tuple(req, &t);
	return report(ctx, listener, &t, BPF_CORE_READ(req, __req_common.skc_state), RETRANSMIT,
		      BPF_CORE_READ((struct tcp_request_sock *)req, snt_isn), 1);
}

/* Since Linux 6.17 the tracepoint also fires for failed attempts, with err set;
 * only segments that really left count, as on older kernels. */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(retransmit__tp_btf, const struct sock *sk, const struct sk_buff *skb)
{
	if (bpf_core_field_exists(struct trace_event_raw_tcp_retransmit_skb, err) && (int)ctx[2])
		return 0;
	return on_retransmit(ctx, sk, skb);
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int retransmit__tracepoint(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	if (bpf_core_field_exists(ctx->err) && ctx->err)
		return 0;
	return on_retransmit(ctx, (const struct sock *)ctx->skaddr, (const struct sk_buff *)ctx->skbaddr);
}

SEC("kprobe/tcp_retransmit_skb")
int BPF_KPROBE(retransmit__kprobe, struct sock *sk, struct sk_buff *skb)
{
	return on_retransmit(ctx, sk, skb);
}

SYNACK_RETRANS_HOOKS(on_synack)

SEC("kprobe/tcp_rtx_synack")
int BPF_KPROBE(synack__kprobe, const struct sock *sk, struct request_sock *req)
{
	return on_synack(ctx, sk, req);
}

/* No tracepoint marks a tail loss probe; only a kprobe (or fentry) can see it. */
SEC("kprobe/tcp_send_loss_probe")
int BPF_KPROBE(tlp__kprobe, struct sock *sk)
{
	struct sock_tuple t;

	if (!with_tlp)
		return 0;
	read_sock_tuple(sk, &t);
	return report(ctx, sk, &t, BPF_CORE_READ(sk, __sk_common.skc_state), TLP,
		      BPF_CORE_READ((struct tcp_sock *)sk, snd_nxt), 0);
}

SOCK_OWNER_HOOKS
