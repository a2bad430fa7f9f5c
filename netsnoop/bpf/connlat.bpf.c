// SPDX-License-Identifier: GPL-2.0
/* connlat: time from connect() to the peer's answer (tcpconnlat): the attempts of
 * conn.h that the peer answered, with a SYN-ACK or a reset. */
#include "conn.h"

const volatile __u64 min_lat_ns = 0; /* only report slower connects */

static __always_inline int on_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	__u64 now = bpf_ktime_get_ns();
	struct conn_owner *owner;
	struct sock_tuple t;

	if (newstate == TCP_SYN_SENT)
		return remember_connect(sk, now);
	if (!attempt_resolves(oldstate, newstate))
		return 0;
	owner = conn_recall(sk);
	if (!owner)
		return 0;
	if (attempt_answered(newstate, conn_error(sk, owner)) && now - owner->start_ns >= min_lat_ns) {
		read_sock_tuple(sk, &t);
		emit(ctx, sk, &t, owner, CONN_CONNECT, newstate, now);
	}
	conn_forget(sk);
	return 0;
}

SET_STATE_HOOKS(on_state)
