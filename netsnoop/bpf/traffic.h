/* Shared by the traffic and loss tools (top, subnet, retrans, drop): the byte-count
 * hooks of top and subnet, and counting by more than one in an in-kernel aggregation.
 *
 * Byte counts: how many payload bytes a process just sent on / received from a
 * socket, in that process's context. The sock_send_length / sock_recv_length
 * tracepoints (kernels from 2023 on) fire after sendmsg/recvmsg with the real byte
 * count; older kernels fall back to kprobes on tcp_sendmsg (the requested size, as
 * bcc's tcptop counts it) and tcp_cleanup_rbuf (bytes copied to the user). Variants
 * are named <group>__<kind> like hooks.h's. */
#ifndef __NETSNOOP_TRAFFIC_H
#define __NETSNOOP_TRAFFIC_H

#include "netsnoop.h"

#define MSG_PEEK 2

/* handler(struct sock *sk, long bytes, bool btf_sk): bytes handed to TCP by sendmsg().
 * btf_sk is a constant, true in the variant whose sk is a typed (BTF) pointer: only
 * there may the handler read the socket directly (no bpf_probe_read_kernel), as top's
 * per-CPU cache does on every call. */
#define SOCK_SEND_HOOKS(handler)                                                        \
	SEC("tp_btf/sock_send_length")                                                  \
	int BPF_PROG(send__tp_btf, struct sock *sk, int ret, int flags)                 \
	{                                                                               \
		return handler(sk, ret, true);                                          \
	}                                                                               \
	SEC("tracepoint/sock/sock_send_length")                                         \
	int send__tracepoint(struct trace_event_raw_sock_msg_length *ctx)               \
	{                                                                               \
		if (ctx->protocol != IPPROTO_TCP)                                       \
			return 0;                                                       \
		return handler((struct sock *)ctx->sk, ctx->ret, false);                \
	}                                                                               \
	SEC("kprobe/tcp_sendmsg")                                                       \
	int BPF_KPROBE(send__kprobe, struct sock *sk, void *msg, size_t size)           \
	{                                                                               \
		return handler(sk, size, false);                                        \
	}

/* handler(struct sock *sk, long bytes, bool btf_sk): bytes recvmsg() gave the process
 * (MSG_PEEK reads are skipped: the same bytes are read again later). */
#define SOCK_RECV_HOOKS(handler)                                                        \
	SEC("tp_btf/sock_recv_length")                                                  \
	int BPF_PROG(recv__tp_btf, struct sock *sk, int ret, int flags)                 \
	{                                                                               \
		if (flags & MSG_PEEK)                                                   \
			return 0;                                                       \
		return handler(sk, ret, true);                                          \
	}                                                                               \
	SEC("tracepoint/sock/sock_recv_length")                                         \
	int recv__tracepoint(struct trace_event_raw_sock_msg_length *ctx)               \
	{                                                                               \
		if (ctx->protocol != IPPROTO_TCP || (ctx->flags & MSG_PEEK))            \
			return 0;                                                       \
		return handler((struct sock *)ctx->sk, ctx->ret, false);                \
	}                                                                               \
	SEC("kprobe/tcp_cleanup_rbuf")                                                  \
	int BPF_KPROBE(recv__kprobe, struct sock *sk, int copied)                       \
	{                                                                               \
		return handler(sk, copied, false);                                      \
	}

/* count_key() adding n rather than 1: the -c tables that count something other than
 * events (retrans: segments). */
static __always_inline void count_key_by(void *map, const void *key, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(map, key);

	if (v) {
		__sync_fetch_and_add(v, n);
		return;
	}
	if (bpf_map_update_elem(map, key, &n, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(map, key); /* created by another CPU meanwhile? */
	if (v)
		__sync_fetch_and_add(v, n);
	else
		count_lost();
}

#endif /* __NETSNOOP_TRAFFIC_H */
