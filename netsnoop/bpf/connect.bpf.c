// SPDX-License-Identifier: GPL-2.0
/* connect: every active TCP open (tcpconnect), reported when connect() starts it, once
 * its local port is known (-L), when it resolves (--outcome), or counted (-c). */
#include "conn.h"

enum report_mode {
	REPORT_ATTEMPT = 0, /* at connect(): no local port yet */
	REPORT_LPORT = 1,   /* when connect() returns or the handshake resolves */
	REPORT_OUTCOME = 2, /* when the handshake resolves: state reached, sk_err, latency */
	REPORT_COUNT = 3,   /* counted per (laddr, raddr, rport) in the kernel */
};
EXPORT_ENUM(report_mode);

const volatile __u8 report_mode = REPORT_ATTEMPT;

/* -c: one counter per local address, remote address and remote port. */
struct count_key {
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 rport;
	__u16 family;
};
EXPORT_STRUCT(count_key);

struct count_value {
	__u64 connects;
};
EXPORT_STRUCT(count_value);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct count_key);
	__type(value, struct count_value);
} counts SEC(".maps");

/* -L: the socket each thread is connecting, until connect() returns. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} connecting SEC(".maps");

static __always_inline void count(const struct sock_tuple *t)
{
	struct count_key key = {};

	__builtin_memcpy(key.laddr, t->saddr, 16);
	__builtin_memcpy(key.raddr, t->daddr, 16);
	key.rport = t->dport;
	key.family = t->family;
	count_key(&counts, &key); /* a full table loses counts: reported as lost events */
}

static __always_inline int begin(const struct sock *sk, __u64 now)
{
	struct conn_owner o = {};
	struct sock_tuple t = {}; /* whole: an IPv4 address fills 4 of its 16 bytes, -c keys on all */
	__u64 key = (__u64)sk;
	__u32 tid;

	if (!connect_begins(sk, &o, &t, now))
		return 0;
	switch (report_mode) {
	case REPORT_COUNT:
		count(&t);
		return 0;
	case REPORT_ATTEMPT:
		return emit(sk, &t, &o, CONN_CONNECT, TCP_SYN_SENT, now);
	case REPORT_LPORT:
		tid = (__u32)bpf_get_current_pid_tgid();
		bpf_map_update_elem(&connecting, &tid, &key, BPF_ANY);
		break;
	}
	conn_remember(sk, &o);
	return 0;
}

/* The first report after connect() began, with the local port now assigned. */
static __always_inline int report(const struct sock *sk, __u8 state, __u64 now)
{
	struct conn_owner *o = conn_recall(sk);
	struct sock_tuple t;

	if (!o)
		return 0;
	read_sock_tuple(sk, &t);
	emit(sk, &t, o, CONN_CONNECT, state, now);
	conn_forget(sk);
	return 0;
}

static __always_inline int on_state(const struct sock *sk, int oldstate, int newstate)
{
	if (newstate == TCP_SYN_SENT)
		return begin(sk, bpf_ktime_get_ns());
	if (attempt_resolves(oldstate, newstate))
		return report(sk, newstate, bpf_ktime_get_ns());
	return 0;
}

SET_STATE_HOOKS(on_state)
SO_ERROR_HOOK

/* connect() returned (-L): a non-blocking attempt is still in SYN_SENT, its port known. */
SEC("tracepoint/syscalls/sys_exit_connect")
int connect_exit__tracepoint(struct syscall_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *sk = bpf_map_lookup_elem(&connecting, &tid);
	const struct sock *s;

	if (!sk)
		return 0;
	s = (const struct sock *)*sk;
	bpf_map_delete_elem(&connecting, &tid);
	return report(s, sock_state(s), bpf_ktime_get_ns());
}
