// SPDX-License-Identifier: GPL-2.0
/* resets: TCP resets received, counted per network namespace in the kernel (overview's
 * "resets received": the kernel keeps no counter of them, only of those it sends). */
#include "hooks.h"

COUNT_MAP(received, __u32, 4096); /* resets received per network namespace (inode) */

static __always_inline int on_receive_reset(void *ctx, const struct sock *sk)
{
	__u32 netns = sock_netns(sk);

	count_key(&received, &netns); /* a full table counts as a lost event */
	return 0;
}

TCP_SK_EVENT_HOOKS(receive_reset, tcp_receive_reset, on_receive_reset)
