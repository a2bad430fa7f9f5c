// SPDX-License-Identifier: GPL-2.0
/* life: one record per TCP session when it closes, with its owner, duration and
 * payload bytes from the socket's own counters, less the SYN and FIN that those
 * count as sequence space (tcplife). */
#include "hooks.h"
#include "where.h"

struct event {
	__u64 ts_ns;
	__u64 span_ns;
	__u64 rx_bytes;
	__u64 tx_bytes;
	__u64 cgroup;   /* the owner's cgroup v2 id */
	__u32 pid;
	__u32 netns;    /* the socket's network namespace (inode) */
	struct sock_tuple t; /* decoded flat: saddr/sport local, daddr/dport remote */
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(event);

/* A live session: when it began, the process that owns it (pid 0 until a
 * process-context hook names one), and what the filters judge it by should its end
 * never reach a hook (see count_end_not_seen). */
struct session {
	__u64 birth_ns;
	__u64 alive_ns; /* when the exit check last found its socket */
	__u64 cgroup;   /* the owner's cgroup v2 id, with pid */
	__u32 pid;
	__u32 netns;    /* the socket's network namespace (inode) */
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 active;    /* begun by connect(): its own SYN is in bytes_acked */
	__u8 fin_sent;  /* it sent a FIN, which bytes_acked counts once acked */
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, struct session);
} sessions SEC(".maps");

/* Sessions that closed, through the filters, without their start having been seen:
 * begun before tracing did, or (rarely, under storms) a start the hook did not see.
 * Counted, so that a session without a row is never silent. */
PERCPU_COUNTER(closes_without_start);

static __always_inline void count_close_without_start(const struct sock *sk)
{
	struct sock_tuple t;

	/* whose it is is unknown: -p and --cgroup cannot tell */
	if (filter_pids[0] || filter_cgroup || !sock_is_tcp(sk))
		return;
	read_sock_tuple(sk, &t);
	if (tuple_allowed(&t) && netns_allowed(sock_netns(sk)))
		count_one(&closes_without_start);
}

/* Sessions that ended, through the filters, without any hook seeing their end: the
 * kernel did not run the state and destroy hooks for it (it does so at times, under
 * storms, without counting a skipped run). Counted here when another socket is born
 * at the same address; user space adds those the exit check finds. Their rows are
 * missing. */
PERCPU_COUNTER(ends_not_seen);

/* -p and --cgroup against a session's owner (the namespace was judged at birth). */
static __always_inline bool owner_allowed(const struct session *s)
{
	return pid_allowed(s->pid) && (!filter_cgroup || s->cgroup == filter_cgroup);
}

static __always_inline void count_end_not_seen(const struct session *s)
{
	if (family_allowed(s->family) && ports_allowed(s->lport, s->rport) && owner_allowed(s))
		count_one(&ends_not_seen);
}

static __always_inline __u16 local_port(const struct sock *sk)
{
	return bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/* Family and ports at birth. A connecting socket gets its local port just after its
 * SYN_SENT: that one is read again at ESTABLISHED. */
static __always_inline void note_ports(const struct sock *sk, struct session *s)
{
	s->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	s->lport = local_port(sk);
	s->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

static __always_inline void claim(struct session *s)
{
	s->pid = current_pid();
	s->cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(s->comm, sizeof(s->comm));
}

/* Process context: the caller uses the socket, so it owns it. */
static __always_inline int on_io(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct session *s = bpf_map_lookup_elem(&sessions, &key);

	if (s && s->pid != current_pid())
		claim(s);
	return 0;
}

/* Payload bytes the peer acknowledged. bytes_acked counts sequence space acked: an
 * active open's SYN (acked by the SYN-ACK; a passive open's SYN-ACK is not counted)
 * and our FIN once acked (then snd_una has reached write_seq, which counts the FIN). */
static __always_inline __u64 payload_acked(const struct sock *sk, const struct session *s)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u64 acked = BPF_CORE_READ(tp, bytes_acked);

	if (s->active && acked)
		acked--;
	if (s->fin_sent && acked && BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		acked--;
	return acked;
}

/* Payload bytes received. bytes_received counts the peer's FIN once it is taken in
 * order, which is when the kernel sets SOCK_DONE. */
static __always_inline __u64 payload_received(const struct sock *sk)
{
	__u64 received = BPF_CORE_READ((const struct tcp_sock *)sk, bytes_received);
	unsigned long flags = BPF_CORE_READ(sk, __sk_common.skc_flags);

	if (received && (flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))))
		received--;
	return received;
}

/* The session's row: at its CLOSE, or at the socket's destruction if that CLOSE
 * never reached the hook. */
static __always_inline void end_session(void *ctx, const struct sock *sk, __u64 key, struct session *s)
{
	__u64 now = bpf_ktime_get_ns();
	struct sock_tuple t;
	struct event *e;

	read_sock_tuple(sk, &t);
	if (!tuple_allowed(&t) || !owner_allowed(s))
		goto done;

	e = reserve_event(sizeof(*e));
	if (!e)
		goto done;
	e->ts_ns = now;
	e->span_ns = now - s->birth_ns;
	e->rx_bytes = payload_received(sk);
	e->tx_bytes = payload_acked(sk, s);
	e->cgroup = s->cgroup;
	e->pid = s->pid;
	e->netns = s->netns;
	e->t = t;
	__builtin_memcpy(e->comm, s->comm, TASK_COMM_LEN);
	submit_event(ctx, e, sizeof(*e));
done:
	bpf_map_delete_elem(&sessions, &key);
}

/* The first step of a session the hook sees (a later one than its first if tracing
 * began in between): its birth time, namespace and ends, and for connect() (SYN_SENT,
 * in process context) its owner. --netns: a session elsewhere is never kept, so never
 * shown. */
static __always_inline int begin(const struct sock *sk, int newstate)
{
	__u64 key = (__u64)sk;
	struct session fresh = {};

	if (!sock_is_tcp(sk))
		return 0;
	fresh.netns = sock_netns(sk);
	if (!netns_allowed(fresh.netns))
		return 0;
	fresh.birth_ns = bpf_ktime_get_ns();
	note_ports(sk, &fresh);
	if (newstate == TCP_SYN_SENT) {
		claim(&fresh);
		fresh.active = 1;
	}
	bpf_map_update_elem(&sessions, &key, &fresh, BPF_ANY);
	return 0;
}

/* SYN_SENT, SYN_RECV, ESTABLISHED: the session is being born. CLOSE -> SYN_SENT
 * (connect) and LISTEN -> SYN_RECV (a listener's new child) are a socket's first
 * steps: whatever the map holds for this address then is the session of an earlier
 * socket whose end no hook saw. It is counted and replaced, so a new socket never
 * inherits an old birth time or owner. */
static __always_inline int born(const struct sock *sk, int oldstate, int newstate)
{
	bool first = (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) ||
		     (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV);
	__u64 key = (__u64)sk;
	struct session *s = bpf_map_lookup_elem(&sessions, &key);

	if (s && first) {
		count_end_not_seen(s); /* the last socket here ended unseen */
		bpf_map_delete_elem(&sessions, &key);
		s = NULL;
	}
	if (!s)
		return begin(sk, newstate);
	if (newstate == TCP_ESTABLISHED && !s->lport)
		s->lport = local_port(sk);
	return 0;
}

/* close()/shutdown() by the owner (process context): it sends a FIN. */
static __always_inline int fin_sent(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct session *s = bpf_map_lookup_elem(&sessions, &key);

	if (s) {
		s->fin_sent = 1;
		if (s->pid != current_pid())
			claim(s);
	}
	return 0;
}

/* CLOSE: the session's row. It sent a FIN if it closes from FIN_WAIT1/2, TIME_WAIT,
 * LAST_ACK or CLOSING, also when the hook did not see the change that sent it. */
static __always_inline int closed(void *ctx, const struct sock *sk, int oldstate)
{
	__u64 key = (__u64)sk;
	struct session *s = bpf_map_lookup_elem(&sessions, &key);

	if (!s) {
		if (oldstate != TCP_LISTEN) /* a listener is not a session */
			count_close_without_start(sk);
		return 0;
	}
	if (oldstate >= TCP_FIN_WAIT1 && oldstate != TCP_CLOSE_WAIT && oldstate != TCP_LISTEN)
		s->fin_sent = 1;
	end_session(ctx, sk, key, s);
	return 0;
}

static __always_inline int on_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	if (newstate < TCP_FIN_WAIT1) /* SYN_SENT, SYN_RECV, ESTABLISHED */
		return born(sk, oldstate, newstate);
	if ((oldstate == TCP_ESTABLISHED && newstate == TCP_FIN_WAIT1) ||
	    (oldstate == TCP_CLOSE_WAIT && newstate == TCP_LAST_ACK))
		return fin_sent(sk);
	if (newstate == TCP_CLOSE)
		return closed(ctx, sk, oldstate);
	return 0;
}

/* The socket is being destroyed (always after its CLOSE). A session still here lost
 * its CLOSE: under storms the kernel sometimes does not run the state hook for an
 * orphaned socket's last changes (one fired inside another run of it on that CPU).
 * Its row is written now, a moment later than the CLOSE. */
static __always_inline int on_destroy(void *ctx, const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct session *s = bpf_map_lookup_elem(&sessions, &key);

	if (s)
		end_session(ctx, sk, key, s);
	return 0;
}

/* ---- the exit check: sessions whose socket is gone but whose end no hook saw ---- */

const volatile __u32 own_netns = 0; /* netsnoop's network namespace: what iter/tcp walks */
__u64 walk_started_ns = 0;

/* Step 1 (run by user space at exit): stamp the sessions whose socket is in this
 * namespace's TCP tables. */
SEC("iter/tcp")
int mark_alive(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct session *s;
	__u64 key;

	if (ctx->meta->seq_num == 0)
		walk_started_ns = bpf_ktime_get_ns();
	if (!skc)
		return 0;
	key = (__u64)skc;
	s = bpf_map_lookup_elem(&sessions, &key);
	if (s)
		s->alive_ns = bpf_ktime_get_ns();
	return 0;
}

/* Step 2, right after (run once by user space): a session of this namespace not
 * stamped, begun well before step 1 (a socket is put in the tables just after its first
 * state change), has no socket any more, yet its end deleted nothing: no hook saw that
 * end. Its row is missing. A raw_tp program walking the map, not a map iterator: a
 * kernel in integrity lockdown refuses bpf_map_elem iterators (EPERM), not these. */
#define HASHING_GRACE_NS 10000000ULL

static long count_if_unseen(struct bpf_map *map, __u64 *key, struct session *s, __u64 *started)
{
	if (s->netns == own_netns && s->alive_ns < *started && s->birth_ns + HASHING_GRACE_NS < *started)
		count_end_not_seen(s);
	return 0;
}

SEC("raw_tp")
int count_unseen_ends(void *ctx)
{
	__u64 started = walk_started_ns;

	if (started)
		bpf_for_each_map_elem(&sessions, count_if_unseen, &started, 0);
	return 0;
}

TCP_SK_EVENT_HOOKS(destroy, tcp_destroy_sock, on_destroy)

SET_STATE_HOOKS(on_state)
SOCK_IO_HOOKS(on_io)
