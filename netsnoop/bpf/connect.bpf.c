// SPDX-License-Identifier: GPL-2.0
/* connect: every active TCP open (tcpconnect), reported when connect() starts it, once
 * its local port is known (-L), when it resolves (--outcome), or counted at either
 * point (-c, -c --outcome, export). */
#include "conn_count.h"
#include "hist.h"

enum report_mode {
	REPORT_ATTEMPT = 0, /* at connect(): no local port yet */
	REPORT_LPORT = 1,   /* when connect() returns or the handshake resolves */
	REPORT_OUTCOME = 2, /* when the handshake resolves: state reached, sk_err, latency */
};
EXPORT_ENUM(report_mode);

/* Rows, or with count_only counts (conn_count.h): attempts at connect() (-c), or
 * outcomes once the handshake resolves (-c --outcome, export). */
const volatile __u8 report_mode = REPORT_ATTEMPT;

/* Time from connect() to the resolution, log2 of microseconds, per count key with its
 * outcome (COUNT_LATENCY: export, whose keys hold no addresses). A per-CPU map is
 * allocated whole on every CPU: one entry unless user space sizes it for use. */
HIST_MAP(latency, struct conn_count_key, 1);

/* -L: the socket each thread is connecting, until connect() returns. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} connecting SEC(".maps");

/* One more connect under its key: an attempt (state 0), or how it resolved. */
static __always_inline void count(const struct sock *sk, const struct sock_tuple *t, const struct conn_owner *o,
				  __u8 state, __u64 now)
{
	struct conn_count_key key;

	count_key_of(&key, t, o->netns, t->dport, true);
	if (state) {
		key.state = state;
		key.err = state == TCP_ESTABLISHED ? 0 : conn_error(sk, o);
	}
	count_key(&counts, &key); /* a full table loses counts: reported as lost events */
	if (state && (count_flags & COUNT_LATENCY))
		hist_add_scaled(&latency, &key, now - o->start_ns, 1000);
}

static __always_inline int begin(void *ctx, const struct sock *sk, __u64 now)
{
	struct conn_owner o = {};
	struct sock_tuple t = {};
	__u64 key = (__u64)sk;
	__u32 tid;

	if (count_only) {
		if (!count_sock_allowed(sk, &o, &t, now))
			return 0;
		o.t = t;
	} else if (!connect_begins(sk, &o, &t, now)) {
		return 0;
	}
	switch (report_mode) {
	case REPORT_ATTEMPT:
		if (count_only) {
			count(sk, &t, &o, 0, now);
			return 0;
		}
		return emit(ctx, sk, &t, &o, CONN_CONNECT, TCP_SYN_SENT, now);
	case REPORT_LPORT:
		tid = (__u32)bpf_get_current_pid_tgid();
		bpf_map_update_elem(&connecting, &tid, &key, BPF_ANY);
		break;
	}
	conn_remember(sk, &o);
	return 0;
}

/* The first report after connect() began, with the local port now assigned. */
static __always_inline int report(void *ctx, const struct sock *sk, __u8 state, __u64 now)
{
	struct conn_owner *o = conn_recall(sk);
	struct sock_tuple t;

	if (!o)
		return 0;
	if (count_only) {
		/* the ends as connect() saw them: the count keys on no local port */
		count(sk, &o->t, o, state, now);
	} else {
		read_sock_tuple(sk, &t);
		emit(ctx, sk, &t, o, CONN_CONNECT, state, now);
	}
	conn_forget(sk);
	return 0;
}

static __always_inline int on_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	if (newstate == TCP_SYN_SENT)
		return begin(ctx, sk, bpf_ktime_get_ns());
	if (attempt_resolves(oldstate, newstate))
		return report(ctx, sk, newstate, bpf_ktime_get_ns());
	return 0;
}

SET_STATE_HOOKS(on_state)
SO_ERROR_HOOK

/* connect() returned (-L): a non-blocking attempt is still in SYN_SENT, its port known. */
SEC("tracepoint/syscalls/sys_exit_connect")
int connect_exit__tracepoint(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *sk = bpf_map_lookup_elem(&connecting, &tid);
	const struct sock *s;

	if (!sk)
		return 0;
	s = (const struct sock *)*sk;
	bpf_map_delete_elem(&connecting, &tid);
	return report(ctx, s, sock_state(s), bpf_ktime_get_ns());
}
