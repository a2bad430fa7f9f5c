// SPDX-License-Identifier: GPL-2.0
/* resets: TCP resets received, counted per network namespace in the kernel (overview's
 * "resets received": the kernel keeps no counter of them, only of those it sends). */
#include "hooks.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);   /* the socket's network namespace (inode) */
	__type(value, __u64); /* resets it received */
} received SEC(".maps");

static __always_inline int on_receive_reset(void *ctx, const struct sock *sk)
{
	__u32 netns = sock_netns(sk);

	count_key(&received, &netns); /* a full table counts as a lost event */
	return 0;
}

TCP_SK_EVENT_HOOKS(receive_reset, tcp_receive_reset, on_receive_reset)
