// SPDX-License-Identifier: GPL-2.0
/* accept: every TCP connection returned by accept()/accept4() (tcpaccept), reported in
 * the accepting process's context, or counted (-c, export). A connect to a closed port
 * never gets here. */
#include "conn_count.h"

static __always_inline int on_accept(void *ctx, const struct sock *sk)
{
	struct conn_owner o = {};
	struct conn_count_key key;
	struct sock_tuple t = {};

	if (count_only) {
		if (!count_sock_allowed(sk, &o, &t, 0))
			return 0;
		count_key_of(&key, &t, o.netns, t.sport, false);
		count_key(&counts, &key); /* a full table loses counts: reported as lost events */
		return 0;
	}
	if (!accepted(sk, &o, &t))
		return 0;
	return emit(ctx, sk, &t, &o, CONN_ACCEPT, sock_state(sk), bpf_ktime_get_ns());
}

ACCEPT_HOOKS(on_accept)
