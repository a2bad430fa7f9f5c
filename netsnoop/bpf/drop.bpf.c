// SPDX-License-Identifier: GPL-2.0
/* drop: TCP packets the kernel frees as dropped (skb:kfree_skb), with the packet's
 * addresses and flags, the socket state and owner, the network namespace, the
 * kernel's drop reason and the kernel stack of the drop point (tcpdrop); or, with -c,
 * counted per reason, namespace and 4-tuple. */
#include "hooks.h"
#include "owner.h"

#define MAX_STACK 32
#define MAX_REASONS 16

struct event {
	__u64 ts_ns;
	__u64 location; /* return address into the function that dropped it */
	__u64 cgroup; /* the owner's cgroup v2 id, or 0 */
	__u32 pid; /* the owner of the socket that had the packet (sock_owners), or 0 */
	__u32 reason; /* enum skb_drop_reason; names come from kernel BTF */
	struct sock_tuple t; /* the packet's ends, decoded flat: saddr, daddr, sport, dport, family */
	__u8 state; /* 0 when no socket is attached */
	__u8 tcpflags;
	char comm[TASK_COMM_LEN];
	__s32 stack_bytes; /* bytes of stack[] filled, or a negative error */
	__u32 netns; /* packet_netns() */
	__u64 stack[MAX_STACK];
};
EXPORT_STRUCT(event);

struct drop_key {
	__u32 reason;
	__u32 netns; /* packet_netns() */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};
EXPORT_STRUCT(drop_key);

const volatile __u32 filter_reasons[MAX_REASONS] = {}; /* 0-terminated, empty = all */
const volatile __u32 exclude_reasons[MAX_REASONS] = {}; /* 0-terminated: never these */
const volatile __u8 count_only = 0;
const volatile __u8 with_stack = 1;

COUNT_MAP(counts, struct drop_key, 16384);

static __always_inline bool reason_allowed(__u32 reason)
{
	if (filter_reasons[0] != 0 && !u32_in(filter_reasons, MAX_REASONS, reason))
		return false;
	return !u32_in(exclude_reasons, MAX_REASONS, reason);
}

static __always_inline void count_drop(const struct sock_tuple *t, __u32 reason, __u32 netns)
{
	struct drop_key key = {.reason = reason, .netns = netns, .family = t->family, .sport = t->sport,
			       .dport = t->dport};

	__builtin_memcpy(key.saddr, t->saddr, 16);
	__builtin_memcpy(key.daddr, t->daddr, 16);
	count_key(&counts, &key);
}

static __always_inline int on_drop(void *ctx, const struct sk_buff *skb, void *location, __u32 reason,
				   const struct sock *rx_sk)
{
	const struct sock_owner *o;
	struct sock_tuple t = {};
	const struct sock *sk;
	struct event *e;
	__u8 flags = 0;
	__u32 netns;

	if (reason_is_consumed(reason))
		return 0;
	if (!reason_allowed(reason) || !read_skb_tcp(skb, &t, &flags))
		return 0;
	if (!tuple_allowed(&t))
		return 0;
	sk = BPF_CORE_READ(skb, sk);
	if (!sk)
		sk = rx_sk;
	netns = packet_netns(skb, sk); /* a packet no socket took: the device's */
	if (!sock_passes(sk, netns, count_only, &o))
		return 0;
	if (count_only) {
		count_drop(&t, reason, netns);
		return 0;
	}
	e = reserve_event(sizeof(*e));
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->location = (__u64)location;
	owner_copy(o, &e->pid, e->comm, &e->cgroup);
	e->netns = netns;
	e->reason = reason;
	e->t = t;
	e->state = sk ? BPF_CORE_READ(sk, __sk_common.skc_state) : 0;
	e->tcpflags = flags;
	e->stack_bytes = with_stack ? bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0) : 0;
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

/* Arguments grew over time: (skb, location) before 5.17, + reason, + rx_sk in 6.11.
 * Only the ones this kernel passes are read. */
SEC("tp_btf/kfree_skb")
int drop__tp_btf(__u64 *ctx)
{
	__u32 reason = 0;
	const struct sock *rx_sk = NULL;

	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, reason))
		reason = ctx[2];
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, rx_sk))
		rx_sk = (const struct sock *)ctx[3];
	return on_drop(ctx, (const struct sk_buff *)ctx[0], (void *)ctx[1], reason, rx_sk);
}

SEC("tracepoint/skb/kfree_skb")
int drop__tracepoint(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = 0;
	const struct sock *rx_sk = NULL;

	if (bpf_core_field_exists(ctx->reason))
		reason = ctx->reason;
	if (bpf_core_field_exists(ctx->rx_sk))
		rx_sk = ctx->rx_sk;
	return on_drop(ctx, ctx->skbaddr, ctx->location, reason, rx_sk);
}

SOCK_OWNER_HOOKS
