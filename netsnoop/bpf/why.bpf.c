// SPDX-License-Identifier: GPL-2.0
/* why: the evidence behind a TCP connection attempt, in every network namespace --
 * SYNs arriving, SYN-bearing packets the kernel drops (with its reason), SYN-ACKs
 * retransmitted, route lookups that fail, ICMP errors sent, and the handshake states
 * of both ends. User space (netsnoop.verdicts) turns it into one verdict per flow.
 * Only tracepoints: they exist where kprobes and fentry do not. */
#include "hooks.h"


enum why_kind {
	WHY_SYN_IN = 1,         /* a SYN (no ACK) arrived on a device of netns */
	WHY_DROP = 2,           /* a TCP packet with SYN set was dropped (value: reason) */
	WHY_SYNACK_RETRANS = 3, /* a listener retransmitted its SYN-ACK */
	WHY_FIB_FAIL = 4,       /* a TCP route lookup failed (value: errno; IPv4: no netns) */
	WHY_STATE = 5,          /* a handshake state change (oldstate -> state) */
	WHY_ICMP_SEND = 6,      /* an ICMP error sent about a TCP packet (value: type << 8 | code) */
	WHY_SK_ERROR = 7,       /* a connecting socket was given an error (value: sk_err) */
};
EXPORT_ENUM(why_kind);

struct event {
	__u64 ts_ns;
	__u64 sk;        /* socket address, to follow one connect() (0: none) */
	__u64 start_ns;  /* STATE out of SYN_SENT: when the connect() began; STATE SYN_RECV ->
			  * ESTABLISHED: when the SYN it carries arrived (0: none) */
	__u32 syn_netns; /* STATE SYN_RECV -> ESTABLISHED: where the SYN it carries arrived */
	__u32 syn_ifindex;
	__u32 netns;     /* inode of the network namespace (0: not known) */
	__u32 pid;       /* the task on the CPU; only meaningful for a connect() start */
	__s32 value;     /* drop reason / sk_err / route lookup errno / ICMP type and code */
	__u32 extra;     /* retransmits (STATE), receiving ifindex (SYN_IN, DROP) */
	struct sock_tuple t; /* decoded flat; s = source on the wire or local end of the socket */
	__u8 kind;       /* enum why_kind */
	__u8 state;      /* new state (STATE); state of the packet's socket (DROP), 0 = none */
	__u8 oldstate;
	__u8 tcpflags;   /* STATE out of SYN_SENT: 1 when an error was reported while connecting */
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(event);

/* A connect() under way: what its start showed (the caller's pid and comm exist only
 * in its context), kept here until its outcome's event carries it, so a connect()
 * costs one event. A full table sends the start as an event of its own (nothing is
 * lost); user space takes what is left at the end (connect()s still waiting). */
struct connecting {
	__u64 start_ns;
	__u32 pid;
	__u32 netns;
	__s32 err;       /* sk_err when an error was reported while connecting (an ICMP error) */
	__u8 reported;
	struct sock_tuple t;
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(connecting);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64); /* the socket's address */
	__type(value, struct connecting);
} connecting SEC(".maps");

static __always_inline struct event *new_event(__u8 kind, const struct sock_tuple *t)
{
	struct event *e = reserve_event(sizeof(*e));

	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->t = *t;
	return e;
}

/* The first SYN of an attempt, held back: a handshake that completes carries it in
 * its SYN_RECV -> ESTABLISHED event (a good connection costs no event of its own for
 * it). Anything else about the attempt (another SYN, the SYN dropped, an ICMP error
 * about it, a SYN-ACK retransmitted) sends it out first as its own SYN_IN event, and
 * user space takes what stays here too long. A full table sends it at once. */
struct syn_key {
	__u32 netns;
	__u32 pad;
	struct sock_tuple t; /* as on the wire: s = the client */
};

struct syn_seen {
	__u64 ts_ns;
	__u32 ifindex;
	__u8 tcpflags;
};
EXPORT_STRUCT(syn_key);
EXPORT_STRUCT(syn_seen);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct syn_key);
	__type(value, struct syn_seen);
} syns SEC(".maps");

/* The key of an attempt: IPv4-mapped addresses (a dual-stack socket's view of an
 * IPv4 client) as IPv4, as the packet had them. */
static __always_inline void syn_key_of(struct syn_key *k, __u32 netns, const struct sock_tuple *t, bool swap)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = netns;
	k->t.family = t->family;
	k->t.sport = swap ? t->dport : t->sport;
	k->t.dport = swap ? t->sport : t->dport;
	__builtin_memcpy(k->t.saddr, swap ? t->daddr : t->saddr, 16);
	__builtin_memcpy(k->t.daddr, swap ? t->saddr : t->daddr, 16);
	if (k->t.family == AF_INET6 && ((__u32 *)k->t.saddr)[0] == 0 && ((__u32 *)k->t.saddr)[1] == 0 &&
	    ((__u32 *)k->t.saddr)[2] == bpf_htonl(0xffff)) {
		k->t.family = AF_INET;
		((__u32 *)k->t.saddr)[0] = ((__u32 *)k->t.saddr)[3];
		((__u32 *)k->t.daddr)[0] = ((__u32 *)k->t.daddr)[3];
		((__u32 *)k->t.saddr)[2] = ((__u32 *)k->t.saddr)[3] = 0;
		((__u32 *)k->t.daddr)[2] = ((__u32 *)k->t.daddr)[3] = 0;
	}
}

/* Take the held SYN of ``k`` (if this program is the one that deletes it). */
static __always_inline bool take_syn(struct syn_key *k, struct syn_seen *out)
{
	struct syn_seen *v = bpf_map_lookup_elem(&syns, k);

	if (!v)
		return false;
	*out = *v;
	return bpf_map_delete_elem(&syns, k) == 0;
}

static __always_inline void emit_syn(void *ctx, const struct syn_key *k, const struct syn_seen *v)
{
	struct event *e = new_event(WHY_SYN_IN, &k->t);

	if (!e)
		return;
	e->ts_ns = v->ts_ns;
	e->netns = k->netns;
	e->extra = v->ifindex;
	e->tcpflags = v->tcpflags;
	submit_event(ctx, e, sizeof(*e));
}

/* Send the held SYN of an attempt out before an event about it. */
static __always_inline void flush_syn(void *ctx, __u32 netns, const struct sock_tuple *t, bool swap)
{
	struct syn_key k;
	struct syn_seen v;

	syn_key_of(&k, netns, t, swap);
	if (take_syn(&k, &v))
		emit_syn(ctx, &k, &v);
}

static __always_inline __u32 skb_netns(const struct sk_buff *skb)
{
	__u32 ns = dev_netns(BPF_CORE_READ(skb, dev));
	const struct sock *sk;

	if (ns)
		return ns;
	sk = BPF_CORE_READ(skb, sk);
	return sk ? sock_netns(sk) : 0;
}

/* ---- a SYN arrives ------------------------------------------------------------------ */

/* netif_receive_skb fires before the stack resets the network header (a NIC's driver
 * leaves it unset), but after eth_type_trans: skb->data is the IP header. */
static __always_inline int on_receive(void *ctx, const struct sk_buff *skb)
{
	struct sock_tuple t = {};
	struct event *e;
	__u8 flags = 0;

	if (!read_tcp_headers(BPF_CORE_READ(skb, data), bpf_ntohs(BPF_CORE_READ(skb, protocol)), &t, &flags))
		return 0;
	if ((flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return 0;
	if (!family_allowed(t.family) || !port_in(filter_ports, t.dport))
		return 0;
	{
		struct syn_key k;
		struct syn_seen v = {};
		__u32 netns = dev_netns(BPF_CORE_READ(skb, dev));
		__u32 ifindex = BPF_CORE_READ(skb, dev, ifindex);

		syn_key_of(&k, netns, &t, false);
		if (take_syn(&k, &v)) { /* a SYN again: both go out */
			emit_syn(ctx, &k, &v);
		} else {
			v.ts_ns = bpf_ktime_get_ns();
			v.ifindex = ifindex;
			v.tcpflags = flags;
			if (bpf_map_update_elem(&syns, &k, &v, BPF_NOEXIST) == 0)
				return 0;
		}
		e = new_event(WHY_SYN_IN, &t);
		if (!e)
			return 0;
		e->netns = netns;
		e->extra = ifindex;
		e->tcpflags = flags;
		submit_event(ctx, e, sizeof(*e));
	}
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(receive__tp_btf, const struct sk_buff *skb)
{
	return on_receive(ctx, skb);
}

SEC("tracepoint/net/netif_receive_skb")
int receive__tracepoint(struct trace_event_raw_net_dev_template *ctx)
{
	return on_receive(ctx, (const struct sk_buff *)ctx->skbaddr);
}

/* ---- a SYN or SYN-ACK is dropped -------------------------------------------------- */

static __always_inline int on_drop(void *ctx, const struct sk_buff *skb, __u32 reason)
{
	struct sock_tuple t = {};
	const struct sock *sk;
	struct event *e;
	__u8 flags = 0;

	if (reason_is_consumed(reason))
		return 0;
	if (!read_skb_tcp(skb, &t, &flags) || !(flags & TCP_FLAG_SYN))
		return 0;
	if (!family_allowed(t.family) || !(port_in(filter_ports, t.dport) || port_in(filter_ports, t.sport)))
		return 0;
	if (!(flags & TCP_FLAG_ACK))
		flush_syn(ctx, skb_netns(skb), &t, false);
	e = new_event(WHY_DROP, &t);
	if (!e)
		return 0;
	sk = BPF_CORE_READ(skb, sk);
	e->netns = skb_netns(skb);
	e->value = reason;
	e->extra = BPF_CORE_READ(skb, skb_iif);
	e->state = sk ? BPF_CORE_READ(sk, __sk_common.skc_state) : 0;
	e->tcpflags = flags;
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

SEC("tp_btf/kfree_skb")
int drop__tp_btf(__u64 *ctx)
{
	__u32 reason = 0;

	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, reason))
		reason = ctx[2];
	return on_drop(ctx, (const struct sk_buff *)ctx[0], reason);
}

SEC("tracepoint/skb/kfree_skb")
int drop__tracepoint(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = 0;

	if (bpf_core_field_exists(ctx->reason))
		reason = ctx->reason;
	return on_drop(ctx, ctx->skbaddr, reason);
}

/* ---- a listener retransmits its SYN-ACK ------------------------------------------- */

static __always_inline int on_synack_retrans(void *ctx, const struct sock *sk, const struct request_sock *req)
{
	struct sock_tuple t;
	struct event *e;

	read_req_tuple(req, &t);
	if (!family_allowed(t.family) || !port_in(filter_ports, t.sport))
		return 0;
	flush_syn(ctx, sock_netns(sk), &t, true);
	e = new_event(WHY_SYNACK_RETRANS, &t);
	if (!e)
		return 0;
	e->netns = sock_netns(sk);
	e->sk = (__u64)sk;
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

SYNACK_RETRANS_HOOKS(on_synack_retrans)

/* ---- a route lookup fails (IPv4) ---------------------------------------------------- */

/* The lookup carries no namespace: user space matches it to a flow by its ports and
 * addresses (a SYN-ACK's lookup is the SYN's tuple reversed). */
static __always_inline int on_fib(void *ctx, const struct flowi4 *flp, int err)
{
	struct sock_tuple t = {};
	struct event *e;

	if (err == 0 || BPF_CORE_READ(flp, __fl_common.flowic_proto) != IPPROTO_TCP)
		return 0;
	t.family = AF_INET;
	t.sport = bpf_ntohs(BPF_CORE_READ(flp, uli.ports.sport));
	t.dport = bpf_ntohs(BPF_CORE_READ(flp, uli.ports.dport));
	if (!family_allowed(AF_INET) || !(port_in(filter_ports, t.sport) || port_in(filter_ports, t.dport)))
		return 0;
	BPF_CORE_READ_INTO((__u32 *)t.saddr, flp, saddr);
	BPF_CORE_READ_INTO((__u32 *)t.daddr, flp, daddr);
	e = new_event(WHY_FIB_FAIL, &t);
	if (!e)
		return 0;
	e->value = err;
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

SEC("tp_btf/fib_table_lookup")
int BPF_PROG(fib__tp_btf, __u32 tb_id, const struct flowi4 *flp, const struct fib_nh_common *nhc, int err)
{
	return on_fib(ctx, flp, err);
}

/* The classic tracepoint copies the flow's fields out (no pointer to it). */
SEC("tracepoint/fib/fib_table_lookup")
int fib__tracepoint(struct trace_event_raw_fib_table_lookup *ctx)
{
	struct sock_tuple t = {};
	struct event *e;

	if (ctx->err == 0 || ctx->proto != IPPROTO_TCP)
		return 0;
	t.family = AF_INET;
	t.sport = ctx->sport;
	t.dport = ctx->dport;
	if (!family_allowed(AF_INET) || !(port_in(filter_ports, t.sport) || port_in(filter_ports, t.dport)))
		return 0;
	__builtin_memcpy(t.saddr, ctx->src, 4);
	__builtin_memcpy(t.daddr, ctx->dst, 4);
	e = new_event(WHY_FIB_FAIL, &t);
	if (!e)
		return 0;
	e->value = ctx->err;
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

/* ---- a route lookup fails (IPv6) ---------------------------------------------------- */

#define RTN_BLACKHOLE_ 6
#define RTN_UNREACHABLE_ 7
#define RTN_PROHIBIT_ 8
#define RTN_THROW_ 9

/* The errno the kernel gives each failing route type (ip6_rt_type_to_error). */
static __always_inline int rt6_error(__u8 type)
{
	switch (type) {
	case RTN_BLACKHOLE_: return -22;    /* EINVAL */
	case RTN_UNREACHABLE_: return -113; /* EHOSTUNREACH */
	case RTN_PROHIBIT_: return -13;     /* EACCES */
	case RTN_THROW_: return -11;        /* EAGAIN */
	}
	return 0;
}

static __always_inline int fib6_event(void *ctx, __u32 netns, const struct sock_tuple *t, int err)
{
	struct event *e;

	if (!err || !family_allowed(AF_INET6) || !(port_in(filter_ports, t->sport) || port_in(filter_ports, t->dport)))
		return 0;
	e = new_event(WHY_FIB_FAIL, t);
	if (!e)
		return 0;
	e->netns = netns;
	e->value = err;
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

SEC("tp_btf/fib6_table_lookup")
int BPF_PROG(fib6__tp_btf, const struct net *net, const struct fib6_result *res, struct fib6_table *table,
	     const struct flowi6 *flp)
{
	struct sock_tuple t = {};

	if (BPF_CORE_READ(flp, __fl_common.flowic_proto) != IPPROTO_TCP)
		return 0;
	t.family = AF_INET6;
	t.sport = bpf_ntohs(BPF_CORE_READ(flp, uli.ports.sport));
	t.dport = bpf_ntohs(BPF_CORE_READ(flp, uli.ports.dport));
	bpf_core_read(t.saddr, 16, &flp->saddr);
	bpf_core_read(t.daddr, 16, &flp->daddr);
	return fib6_event(ctx, BPF_CORE_READ(net, ns.inum), &t, rt6_error(BPF_CORE_READ(res, fib6_type)));
}

SEC("tracepoint/fib6/fib6_table_lookup")
int fib6__tracepoint(struct trace_event_raw_fib6_table_lookup *ctx)
{
	struct sock_tuple t = {};

	if (ctx->proto != IPPROTO_TCP)
		return 0;
	t.family = AF_INET6;
	t.sport = ctx->sport;
	t.dport = ctx->dport;
	/* 16 bytes at an odd offset: read, since a context may only be loaded aligned */
	bpf_probe_read_kernel(t.saddr, 16, ctx->src);
	bpf_probe_read_kernel(t.daddr, 16, ctx->dst);
	return fib6_event(ctx, 0, &t, ctx->err);
}

/* ---- an ICMP error about a TCP packet is sent (e.g. an nft reject) ---------------- */

static __always_inline int on_icmp(void *ctx, const struct sk_buff *skb, int type, int code)
{
	struct sock_tuple t = {};
	struct event *e;
	__u8 flags = 0;

	if (!read_skb_tcp(skb, &t, &flags) || !(flags & TCP_FLAG_SYN))
		return 0;
	if (!family_allowed(t.family) || !port_in(filter_ports, t.dport))
		return 0;
	if (!(flags & TCP_FLAG_ACK))
		flush_syn(ctx, skb_netns(skb), &t, false);
	e = new_event(WHY_ICMP_SEND, &t);
	if (!e)
		return 0;
	e->netns = skb_netns(skb);
	e->value = (type << 8) | (code & 0xff);
	e->tcpflags = flags;
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

SEC("tp_btf/icmp_send")
int BPF_PROG(icmp__tp_btf, const struct sk_buff *skb, int type, int code)
{
	return on_icmp(ctx, skb, type, code);
}

/* ---- handshake states ---------------------------------------------------------------- */

/* A connect() starting (CLOSE -> SYN_SENT, in the caller's context: its pid and
 * comm; kept in `connecting`), its outcome (SYN_SENT -> ESTABLISHED or CLOSE, with
 * sk_err, how many times the SYN was retransmitted and the start), and a server's
 * handshake completing (SYN_RECV -> ESTABLISHED, the child socket). */
static __always_inline int on_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	struct sock_tuple t = {};
	struct connecting *c = NULL;
	struct syn_key held;
	struct syn_seen syn = {};
	bool carried = false;
	struct event *e;
	__u64 key = (__u64)sk;
	__u16 server_port;

	if (!sock_is_tcp(sk))
		return 0;
	if (oldstate == TCP_SYN_SENT || newstate == TCP_SYN_SENT)
		;
	else if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED)
		;
	else
		return 0;
	read_sock_tuple(sk, &t);
	server_port = oldstate == TCP_SYN_RECV ? t.sport : t.dport;
	if (!family_allowed(t.family) || !port_in(filter_ports, server_port))
		return 0;
	if (newstate == TCP_SYN_SENT) {
		struct connecting start = {};

		start.start_ns = bpf_ktime_get_ns();
		start.pid = current_pid();
		start.netns = sock_netns(sk);
		start.t = t;
		bpf_get_current_comm(start.comm, sizeof(start.comm));
		if (bpf_map_update_elem(&connecting, &key, &start, BPF_ANY) == 0)
			return 0;
	} else if (oldstate == TCP_SYN_SENT) {
		c = bpf_map_lookup_elem(&connecting, &key);
	} else {
		syn_key_of(&held, sock_netns(sk), &t, true);
		carried = take_syn(&held, &syn);
	}
	e = new_event(WHY_STATE, &t);
	if (e) {
		e->sk = key;
		e->netns = sock_netns(sk);
		e->state = newstate;
		e->oldstate = oldstate;
		e->value = BPF_CORE_READ(sk, sk_err);
		e->extra = BPF_CORE_READ((const struct inet_connection_sock *)sk, icsk_retransmits);
		if (newstate == TCP_SYN_SENT) {
			e->pid = current_pid();
			bpf_get_current_comm(e->comm, sizeof(e->comm));
		} else if (c) {
			e->start_ns = c->start_ns;
			e->pid = c->pid;
			__builtin_memcpy(e->comm, c->comm, sizeof(e->comm));
			if (c->reported && c->err)
				e->value = c->err;
			e->tcpflags = c->reported;
		} else if (carried) {
			e->start_ns = syn.ts_ns;
			e->syn_netns = held.netns;
			e->syn_ifindex = syn.ifindex;
		}
		submit_event(ctx, e, sizeof(*e));
	}
	if (c)
		bpf_map_delete_elem(&connecting, &key);
	return 0;
}

SET_STATE_HOOKS(on_state)

/* A reset ends a connect() with sk_err already set when the socket turns CLOSE; an
 * ICMP error is reported while the socket is still SYN_SENT, and the woken connect()
 * may consume sk_err (sock_error) before it is read here: the report itself is the
 * evidence. (The classic tracepoint names no socket, so only the typed one serves.) */
static __always_inline int on_error(void *ctx, const struct sock *sk)
{
	struct sock_tuple t = {};
	struct event *e;
	int state;

	if (!sock_is_tcp(sk))
		return 0;
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state != TCP_SYN_SENT && state != TCP_CLOSE)
		return 0;
	if (state == TCP_SYN_SENT) { /* a connect() under way: its outcome's event says so */
		__u64 key = (__u64)sk;
		struct connecting *c = bpf_map_lookup_elem(&connecting, &key);

		if (c) {
			c->err = BPF_CORE_READ(sk, sk_err);
			c->reported = 1;
			return 0;
		}
	}
	read_sock_tuple(sk, &t);
	if (!family_allowed(t.family) || !port_in(filter_ports, t.dport))
		return 0;
	e = new_event(WHY_SK_ERROR, &t);
	if (!e)
		return 0;
	e->sk = (__u64)sk;
	e->netns = sock_netns(sk);
	e->state = state;
	e->value = BPF_CORE_READ(sk, sk_err);
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(error__tp_btf, const struct sock *sk)
{
	return on_error(ctx, sk);
}
