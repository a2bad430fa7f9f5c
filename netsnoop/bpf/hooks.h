/* Attach variants for the hooks several tools share. Each macro defines one program
 * per hook kind, named <group>__<kind>; the loader keeps the best one the running
 * kernel offers (tp_btf, then the classic tracepoint, then fentry, then kprobe) and
 * every variant calls the same handler. */
#ifndef __NETSNOOP_HOOKS_H
#define __NETSNOOP_HOOKS_H

#include "netsnoop.h"

/* handler(const struct sock *sk, int oldstate, int newstate): every TCP state change. */
#define SET_STATE_HOOKS(handler)                                                        \
	SEC("tp_btf/inet_sock_set_state")                                               \
	int BPF_PROG(set_state__tp_btf, const struct sock *sk, int oldstate, int newstate) \
	{                                                                               \
		return handler(ctx, sk, oldstate, newstate);                                 \
	}                                                                               \
	SEC("tracepoint/sock/inet_sock_set_state")                                      \
	int set_state__tracepoint(struct trace_event_raw_inet_sock_set_state *ctx)      \
	{                                                                               \
		return handler(ctx, (const struct sock *)ctx->skaddr, ctx->oldstate,         \
			       ctx->newstate);                                          \
	}                                                                               \
	SEC("fentry/tcp_set_state")                                                     \
	int BPF_PROG(set_state__fentry, struct sock *sk, int state)                     \
	{                                                                               \
		return handler(ctx, sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);    \
	}                                                                               \
	SEC("kprobe/tcp_set_state")                                                     \
	int BPF_KPROBE(set_state__kprobe, struct sock *sk, int state)                   \
	{                                                                               \
		return handler(ctx, sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);    \
	}

/* Bytes a process just sent on / received from a socket, in that process's context (so
 * current is the socket's user, not whoever owns the softirq). The sock_send_length /
 * sock_recv_length tracepoints (kernels from 2023 on) fire after sendmsg/recvmsg with
 * the real byte count; older kernels fall back to kprobes on tcp_sendmsg (the
 * requested size, as bcc's tcptop counts it) and tcp_cleanup_rbuf (bytes copied to
 * the user). The tracepoints fire for every protocol: the classic one's record names
 * it, so only TCP goes on from there; the handler checks the typed one's socket.
 *
 * handler(struct sock *sk, long bytes, bool btf_sk): btf_sk is a constant, true in the
 * variant whose sk is a typed (BTF) pointer: only there may the handler read the socket
 * directly (no bpf_probe_read_kernel), as top's per-CPU cache does on every call. */
#define MSG_PEEK 2

/* bytes handed to TCP by sendmsg() */
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

/* bytes recvmsg() gave the process (MSG_PEEK reads are skipped: the same bytes are read
 * again later) */
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

/* handler(const struct sock *sk): a process used the socket, however many bytes. */
#define SOCK_IO_HOOKS(handler)                                                          \
	static __always_inline int handler##_io(struct sock *sk, long bytes, bool btf_sk) \
	{                                                                               \
		return handler(sk);                                                     \
	}                                                                               \
	SOCK_SEND_HOOKS(handler##_io)                                                   \
	SOCK_RECV_HOOKS(handler##_io)

/* handler(const struct sock *sk): tcp:<event> of the tcp_event_sk class (tcp_destroy_sock,
 * tcp_receive_reset...), as the hook group <group>. */
#define TCP_SK_EVENT_HOOKS(group, event, handler)                                       \
	SEC("tp_btf/" #event)                                                           \
	int BPF_PROG(group##__tp_btf, struct sock *sk)                                  \
	{                                                                               \
		return handler(ctx, sk);                                                \
	}                                                                               \
	SEC("tracepoint/tcp/" #event)                                                   \
	int group##__tracepoint(struct trace_event_raw_tcp_event_sk *ctx)               \
	{                                                                               \
		return handler(ctx, (const struct sock *)ctx->skaddr);                  \
	}

/* handler(ctx, const struct sock *listener, const struct request_sock *req): a listener
 * sent a SYN-ACK again (tcp:tcp_retransmit_synack), as the hook group synack. */
#define SYNACK_RETRANS_HOOKS(handler)                                                   \
	SEC("tp_btf/tcp_retransmit_synack")                                             \
	int BPF_PROG(synack__tp_btf, const struct sock *sk, const struct request_sock *req) \
	{                                                                               \
		return handler(ctx, sk, req);                                           \
	}                                                                               \
	SEC("tracepoint/tcp/tcp_retransmit_synack")                                     \
	int synack__tracepoint(struct trace_event_raw_tcp_retransmit_synack *ctx)       \
	{                                                                               \
		return handler(ctx, (const struct sock *)ctx->skaddr,                   \
			       (const struct request_sock *)ctx->req);                  \
	}

#endif /* __NETSNOOP_HOOKS_H */
