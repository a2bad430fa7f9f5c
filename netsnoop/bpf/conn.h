/* Connection tracing shared by connect, accept, tracer and connlat: who opened a
 * socket and when (recorded once, in the opener's process context, and recalled when
 * the handshake resolves in softirq), the one event layout these tools emit, and the
 * accept() hooks that turn the returned fd into its socket. */
#ifndef __NETSNOOP_CONN_H
#define __NETSNOOP_CONN_H

#include "hooks.h"
#include "where.h"

enum conn_kind {
	CONN_CONNECT = 1, /* an active open (attempt, or its outcome) */
	CONN_ACCEPT = 2,  /* accept() returned it */
	CONN_CLOSE = 3,   /* an established connection was closed */
};
EXPORT_ENUM(conn_kind);

/* One row of any of the four tools; each uses the fields its columns need. */
struct event {
	__u64 ts_ns;
	__u64 lat_ns;   /* connect() to this event, when the opener was seen */
	__u64 cgroup;   /* the process's cgroup v2 id (its directory's inode) */
	__u32 pid;
	__u32 uid;
	__u32 netns;
	__s32 err;      /* conn_error(): why a connect attempt ended in CLOSE */
	struct sock_tuple t; /* decoded flat: saddr/sport local, daddr/dport remote */
	__u8 kind;      /* enum conn_kind */
	__u8 state;     /* the TCP state the socket reached */
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(event);

/* The process a connection is attributed to, when it opened it, and the ends known
 * then (so an attempt still unanswered when tracing stops can be shown). */
struct conn_owner {
	__u64 start_ns;
	__u64 cgroup;
	__u32 pid;
	__u32 uid;
	__u32 netns;    /* the socket's network namespace (inode) */
	char comm[TASK_COMM_LEN];
	struct sock_tuple t; /* decoded flat; sport: what connect() began with, often 0 */
	__s32 err;      /* a soft error the owner already took with SO_ERROR (so_error hook) */
	__u64 closed_ns; /* tracer only: see OWNED in tracer.bpf.c */
};
EXPORT_STRUCT(conn_owner);

const volatile __u32 filter_uid = 0xffffffff; /* any */

/* Sockets between open and resolution (or close, for tracer). LRU-bounded, and each
 * tool deletes its entry as soon as it has reported the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn_owner);
} conn_owners SEC(".maps");

/* Only valid in process context: the caller is the owner. */
static __always_inline void owner_current(struct conn_owner *o, __u64 now)
{
	o->start_ns = now;
	o->cgroup = bpf_get_current_cgroup_id();
	o->pid = current_pid();
	o->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline bool owner_allowed(const struct conn_owner *o)
{
	return pid_allowed(o->pid) && (filter_uid == 0xffffffff || o->uid == filter_uid) &&
	       (!filter_cgroup || o->cgroup == filter_cgroup);
}

/* Family, port and namespace filters against a socket; fills the tuple and the
 * owner's namespace (read once, for the filter and the row). */
static __always_inline bool sock_allowed(const struct sock *sk, struct sock_tuple *t, struct conn_owner *o)
{
	read_sock_tuple(sk, t);
	if (!tuple_allowed(t))
		return false;
	o->netns = sock_netns(sk);
	return netns_allowed(o->netns);
}

static __always_inline void conn_remember(const struct sock *sk, const struct conn_owner *o)
{
	__u64 key = (__u64)sk;

	bpf_map_update_elem(&conn_owners, &key, o, BPF_ANY);
}

static __always_inline struct conn_owner *conn_recall(const struct sock *sk)
{
	__u64 key = (__u64)sk;

	return bpf_map_lookup_elem(&conn_owners, &key);
}

static __always_inline void conn_forget(const struct sock *sk)
{
	__u64 key = (__u64)sk;

	bpf_map_delete_elem(&conn_owners, &key);
}

/* CLOSE -> SYN_SENT happens inside connect(), in the caller's context (the local
 * port is not chosen yet). Fills the owner and tuple; false when filtered out. */
static __always_inline bool connect_begins(const struct sock *sk, struct conn_owner *o,
					   struct sock_tuple *t, __u64 now)
{
	if (!sock_is_tcp(sk))
		return false;
	owner_current(o, now);
	if (!owner_allowed(o) || !sock_allowed(sk, t, o))
		return false;
	o->t = *t;
	return true;
}

/* connect() begins: remember who, for when the handshake resolves in softirq. */
static __always_inline int remember_connect(const struct sock *sk, __u64 now)
{
	struct conn_owner o = {};
	struct sock_tuple t;

	if (connect_begins(sk, &o, &t, now))
		conn_remember(sk, &o);
	else /* an entry left at this address by a freed socket is not this connect's owner */
		conn_forget(sk);
	return 0;
}

/* accept() returned sk, in the acceptor's context. Fills the owner (no start time:
 * the handshake was done before accept()) and tuple; false when filtered out. */
static __always_inline bool accepted(const struct sock *sk, struct conn_owner *o, struct sock_tuple *t)
{
	if (!sock_is_tcp(sk))
		return false;
	owner_current(o, 0);
	return owner_allowed(o) && sock_allowed(sk, t, o);
}

static __always_inline __u8 sock_state(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_state);
}

/* ---- context -------------------------------------------------------------------- */

/* Whether a task holds the socket lock (lock_sock()): then the state change comes
 * from a system call such as close(), or from the backlog that task processes on
 * release, and current is the socket's user. Packets and timers handled in softirq
 * never run while a task owns the socket, so there current means nothing. */
static __always_inline bool sock_owned_by_task(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_lock.owned) != 0;
}

/* ---- attempts: the one definition connect --outcome and connlat share ---------- */

#define ECONNREFUSED 111

/* The error the connecting socket received: sk_err (a reset, an ICMP error while no
 * task held the socket, a timeout), else sk_err_soft (an ICMP error that came while
 * connect() held the socket: the kernel keeps it there and goes on retransmitting),
 * else the soft error the owner already took with getsockopt(SO_ERROR), which clears
 * it. 0: the owner closed the socket before anything answered. */
static __always_inline __s32 conn_error(const struct sock *sk, const struct conn_owner *o)
{
	__s32 err = BPF_CORE_READ(sk, sk_err);

	if (!err)
		err = BPF_CORE_READ(sk, sk_err_soft);
	return err ? err : o->err;
}

/* An attempt begins when connect() moves a TCP socket CLOSE -> SYN_SENT (process
 * context: connect_begins) and resolves when the socket leaves SYN_SENT, in the state
 * it reached (ESTABLISHED, or CLOSE with conn_error()). Its latency is connect() to
 * that resolution. */
static __always_inline bool attempt_resolves(int oldstate, int newstate)
{
	return oldstate == TCP_SYN_SENT && newstate != TCP_SYN_SENT;
}

/* The peer answered the attempt: its SYN-ACK (ESTABLISHED) or its reset (refused).
 * An ICMP error, a timeout or the owner's close is no answer from the peer. */
static __always_inline bool attempt_answered(int newstate, __s32 err)
{
	return newstate == TCP_ESTABLISHED || (newstate == TCP_CLOSE && err == ECONNREFUSED);
}

/* ---- events --------------------------------------------------------------------- */

static __always_inline int emit(void *ctx, const struct sock *sk, const struct sock_tuple *t,
				const struct conn_owner *o, __u8 kind, __u8 state, __u64 now)
{
	struct event *e = reserve_event(sizeof(*e));

	if (!e)
		return 0;
	e->ts_ns = now;
	e->lat_ns = o->start_ns ? now - o->start_ns : 0;
	e->pid = o->pid;
	e->uid = o->uid;
	e->cgroup = o->cgroup;
	e->netns = o->netns;
	e->err = conn_error(sk, o);
	e->t = *t;
	e->kind = kind;
	e->state = state;
	__builtin_memcpy(e->comm, o->comm, TASK_COMM_LEN);
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

/* ---- accept() --------------------------------------------------------------------- */

/* handler(const struct sock *sk): a connection accept()ed, in the accepting process's
 * context. The syscall exits are tracepoints everywhere (accept may not exist on an
 * architecture: optional group); the kretprobe covers both where they are missing. */
#define ACCEPT_HOOKS(handler)                                                           \
	static __always_inline int handler##_fd(void *ctx, long fd)                     \
	{                                                                               \
		const struct sock *sk = fd_sock(fd);                                    \
		return sk ? handler(ctx, sk) : 0;                                       \
	}                                                                               \
	SEC("tracepoint/syscalls/sys_exit_accept4")                                     \
	int accept4__tracepoint(struct trace_event_raw_sys_exit *ctx)                   \
	{                                                                               \
		return handler##_fd(ctx, ctx->ret);                                     \
	}                                                                               \
	SEC("kretprobe/inet_csk_accept")                                                \
	int BPF_KRETPROBE(accept4__kretprobe, struct sock *sk)                          \
	{                                                                               \
		return sk ? handler(ctx, sk) : 0;                                       \
	}                                                                               \
	SEC("tracepoint/syscalls/sys_exit_accept")                                      \
	int accept__tracepoint(struct trace_event_raw_sys_exit *ctx)                    \
	{                                                                               \
		return handler##_fd(ctx, ctx->ret);                                     \
	}

/* getsockopt(SOL_SOCKET, SO_ERROR) hands the socket's error to its owner and clears it
 * (sk_err, else sk_err_soft): an attempt that got a soft error would then close with
 * none. Read it just before, for conn_error(). A classic tracepoint (optional group). */
#define SOL_SOCKET 1
#define SO_ERROR 4
#define SO_ERROR_HOOK                                                                   \
	SEC("tracepoint/syscalls/sys_enter_getsockopt")                                 \
	int so_error__tracepoint(struct trace_event_raw_sys_enter *ctx)                 \
	{                                                                               \
		const struct sock *sk;                                                  \
		struct conn_owner *o;                                                   \
		__s32 err;                                                              \
                                                                                        \
		if (ctx->args[1] != SOL_SOCKET || ctx->args[2] != SO_ERROR)             \
			return 0;                                                       \
		sk = fd_sock(ctx->args[0]);                                             \
		o = sk ? conn_recall(sk) : NULL;                                        \
		if (!o)                                                                 \
			return 0;                                                       \
		err = BPF_CORE_READ(sk, sk_err);                                        \
		if (!err)                                                               \
			err = BPF_CORE_READ(sk, sk_err_soft);                           \
		if (err)                                                                \
			o->err = err;                                                   \
		return 0;                                                               \
	}

#endif /* __NETSNOOP_CONN_H */
