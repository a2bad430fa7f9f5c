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

static __always_inline int on_receive_reset(const struct sock *sk)
{
	__u32 netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);

	count_key(&received, &netns); /* a full table counts as a lost event */
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(receive_reset__tp_btf, struct sock *sk)
{
	return on_receive_reset(sk);
}

SEC("tracepoint/tcp/tcp_receive_reset")
int receive_reset__tracepoint(struct trace_event_raw_tcp_event_sk *ctx)
{
	return on_receive_reset((const struct sock *)ctx->skaddr);
}
