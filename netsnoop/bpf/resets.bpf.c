// SPDX-License-Identifier: GPL-2.0
/* resets: TCP resets received, counted per network namespace in the kernel (overview's
 * "resets received": the kernel keeps no counter of them, only of those it sends). */
#include "hooks.h"

COUNT_MAP(received, __u32, 4096); /* resets received per network namespace (inode) */

static __always_inline int count_reset(__u32 netns)
{
	count_key(&received, &netns); /* a full table counts as a lost event */
	return 0;
}

/* The typed socket's namespace is read directly: no helper call per field. */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(receive_reset__tp_btf, struct sock *sk)
{
	return count_reset(sk->__sk_common.skc_net.net->ns.inum);
}

SEC("tracepoint/tcp/tcp_receive_reset")
int receive_reset__tracepoint(struct trace_event_raw_tcp_event_sk *ctx)
{
	return count_reset(sock_netns((const struct sock *)ctx->skaddr));
}
