// SPDX-License-Identifier: GPL-2.0
/* accept: every TCP connection returned by accept()/accept4() (tcpaccept), reported in
 * the accepting process's context. A connect to a closed port never gets here. */
#include "conn.h"

static __always_inline int on_accept(const struct sock *sk)
{
	struct conn_owner o;
	struct sock_tuple t;
	__u64 now = bpf_ktime_get_ns();

	if (!sock_is_tcp(sk))
		return 0;
	owner_current(&o, now);
	o.start_ns = 0; /* no latency: the handshake was done before accept() */
	if (!owner_allowed(&o) || !sock_allowed(sk, &t))
		return 0;
	return emit(sk, &t, &o, CONN_ACCEPT, BPF_CORE_READ(sk, __sk_common.skc_state), now);
}

ACCEPT_HOOKS(on_accept)
