// SPDX-License-Identifier: GPL-2.0
/* tracer: established TCP connections as they are connected (C), accepted (A) and
 * closed (X) (tcptracer). Each row names the process that did it. */
#include "conn.h"

/* closed_ns of a remembered socket: OWNED once its owner is known (connect(), or
 * accept()); 0 for a listener's child that accept() has not returned yet; later, the
 * time a reset closed that child while it waited. accept() and the reset race on
 * different CPUs, so the hand-over is one atomic exchange on this field. */
#define OWNED 1

/* C: the handshake completed for a connect() seen starting. */
static __always_inline int connected(void *ctx, const struct sock *sk, int newstate, __u64 now)
{
	struct conn_owner *o = conn_recall(sk);
	struct sock_tuple t;

	if (!o)
		return 0;
	if (newstate != TCP_ESTABLISHED) {
		conn_forget(sk);
		return 0;
	}
	read_sock_tuple(sk, &t);
	emit(ctx, sk, &t, o, CONN_CONNECT, newstate, now);
	o->start_ns = 0; /* kept as the owner, for a close the peer causes */
	return 0;
}

static __always_inline int connect_started(const struct sock *sk, __u64 now)
{
	struct conn_owner o = {};
	struct sock_tuple t;

	if (connect_begins(sk, &o, &t, now)) {
		o.closed_ns = OWNED;
		conn_remember(sk, &o);
	} else { /* a freed socket's entry at this address (a child never accepted) is not its owner */
		conn_forget(sk);
	}
	return 0;
}

/* A listener's new child (LISTEN -> SYN_RECV, in softirq): remembered with no owner
 * yet, so that a reset closing it before accept() is kept for accept() to report,
 * not taken for a connection opened before tracing began. */
static __always_inline int child_born(const struct sock *sk)
{
	struct conn_owner none = {};

	if (sock_is_tcp(sk))
		conn_remember(sk, &none);
	return 0;
}

/* X: the first step out of ESTABLISHED/CLOSE_WAIT towards closing. FIN_WAIT1 and
 * LAST_ACK only happen in close()/shutdown(); CLOSE also when a reset arrives or a
 * timer gives up, in softirq, where the closer is the owner we remembered. */
static __always_inline int closed(void *ctx, const struct sock *sk, int newstate, __u64 now)
{
	struct conn_owner closer, *o;
	struct sock_tuple t;

	if (newstate == TCP_CLOSE && !sock_owned_by_task(sk)) {
		o = conn_recall(sk);
		if (!o)
			return 0; /* opened before we started, closed by the peer */
		/* not accepted yet: leave the time for accept() to report */
		if (__sync_val_compare_and_swap(&o->closed_ns, 0, now) == 0)
			return 0;
		closer = *o;
	} else {
		owner_current(&closer, 0);
	}
	conn_forget(sk);
	closer.start_ns = 0;
	if (!sock_is_tcp(sk) || !owner_allowed(&closer) || !sock_allowed(sk, &t, &closer))
		return 0;
	return emit(ctx, sk, &t, &closer, CONN_CLOSE, newstate, now);
}

static __always_inline int on_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	__u64 now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT)
		return connect_started(sk, now);
	if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV)
		return child_born(sk);
	if (oldstate == TCP_SYN_SENT)
		return connected(ctx, sk, newstate, now);
	if ((oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT) &&
	    (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK || newstate == TCP_CLOSE))
		return closed(ctx, sk, newstate, now);
	return 0;
}

/* A: the acceptor becomes the owner, so that a reset from the peer is charged to it.
 * A connection its peer already reset while it waited in the accept queue gets its X
 * now, charged to the acceptor, with the time it closed. */
static __always_inline int on_accept(void *ctx, const struct sock *sk)
{
	struct conn_owner o = {}, *child = conn_recall(sk);
	struct sock_tuple t;
	__u64 reset_ns;

	if (!accepted(sk, &o, &t)) {
		if (child)
			conn_forget(sk);
		return 0;
	}
	emit(ctx, sk, &t, &o, CONN_ACCEPT, sock_state(sk), bpf_ktime_get_ns());
	if (!child) { /* born before tracing began */
		o.closed_ns = OWNED;
		conn_remember(sk, &o);
		return 0;
	}
	/* the owner first, then the exchange: a reset that sees OWNED sees the owner */
	child->cgroup = o.cgroup;
	child->pid = o.pid;
	child->uid = o.uid;
	__builtin_memcpy(child->comm, o.comm, TASK_COMM_LEN);
	reset_ns = __sync_lock_test_and_set(&child->closed_ns, OWNED);
	if (reset_ns <= OWNED)
		return 0;
	conn_forget(sk);
	return emit(ctx, sk, &t, &o, CONN_CLOSE, TCP_CLOSE, reset_ns);
}

SET_STATE_HOOKS(on_state)
ACCEPT_HOOKS(on_accept)
