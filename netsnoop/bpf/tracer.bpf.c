// SPDX-License-Identifier: GPL-2.0
/* tracer: established TCP connections as they are connected (C), accepted (A) and
 * closed (X) (tcptracer). Each row names the process that did it. */
#include "conn.h"

/* C: the handshake completed for a connect() seen starting. */
static __always_inline int connected(const struct sock *sk, int newstate, __u64 now)
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
	emit(sk, &t, o, CONN_CONNECT, newstate, now);
	o->start_ns = 0; /* kept as the owner, for a close the peer causes */
	return 0;
}

/* X: the first step out of ESTABLISHED/CLOSE_WAIT towards closing. FIN_WAIT1 and
 * LAST_ACK only happen in close()/shutdown(); CLOSE also when a reset arrives or a
 * timer gives up, in softirq, where the closer is the owner we remembered. */
static __always_inline int closed(const struct sock *sk, int newstate, __u64 now)
{
	struct conn_owner closer, *o;
	struct sock_tuple t;

	if (newstate == TCP_CLOSE && !sock_owned_by_task(sk)) {
		o = conn_recall(sk);
		if (!o)
			return 0; /* opened before we started, closed by the peer */
		closer = *o;
	} else {
		owner_current(&closer, 0);
	}
	conn_forget(sk);
	closer.start_ns = 0;
	if (!sock_is_tcp(sk) || !owner_allowed(&closer) || !sock_allowed(sk, &t))
		return 0;
	return emit(sk, &t, &closer, CONN_CLOSE, newstate, now);
}

static __always_inline int on_state(const struct sock *sk, int oldstate, int newstate)
{
	__u64 now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT)
		return remember_connect(sk, now);
	if (oldstate == TCP_SYN_SENT)
		return connected(sk, newstate, now);
	if ((oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT) &&
	    (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK || newstate == TCP_CLOSE))
		return closed(sk, newstate, now);
	return 0;
}

/* A: remembered too, so that a reset from the peer is charged to the acceptor. */
static __always_inline int on_accept(const struct sock *sk)
{
	struct conn_owner o = {};
	struct sock_tuple t;

	if (!accepted(sk, &o, &t))
		return 0;
	conn_remember(sk, &o);
	return emit(sk, &t, &o, CONN_ACCEPT, sock_state(sk), bpf_ktime_get_ns());
}

SET_STATE_HOOKS(on_state)
ACCEPT_HOOKS(on_accept)
