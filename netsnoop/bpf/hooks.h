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

/* handler(const struct sock *sk): a process sent on / received from a socket, in that
 * process's context (so current is the socket's user, not whoever owns the softirq). */
#define SOCK_IO_HOOKS(handler)                                                          \
	SEC("tp_btf/sock_send_length")                                                  \
	int BPF_PROG(send__tp_btf, struct sock *sk, int ret, int flags)                 \
	{                                                                               \
		return handler(sk);                                                     \
	}                                                                               \
	SEC("tracepoint/sock/sock_send_length")                                         \
	int send__tracepoint(struct trace_event_raw_sock_msg_length *ctx)               \
	{                                                                               \
		return handler((const struct sock *)ctx->sk);                           \
	}                                                                               \
	SEC("kprobe/tcp_sendmsg")                                                       \
	int BPF_KPROBE(send__kprobe, struct sock *sk)                                   \
	{                                                                               \
		return handler(sk);                                                     \
	}                                                                               \
	SEC("tp_btf/sock_recv_length")                                                  \
	int BPF_PROG(recv__tp_btf, struct sock *sk, int ret, int flags)                 \
	{                                                                               \
		return handler(sk);                                                     \
	}                                                                               \
	SEC("tracepoint/sock/sock_recv_length")                                         \
	int recv__tracepoint(struct trace_event_raw_sock_msg_length *ctx)               \
	{                                                                               \
		return handler((const struct sock *)ctx->sk);                           \
	}                                                                               \
	SEC("kprobe/tcp_cleanup_rbuf")                                                  \
	int BPF_KPROBE(recv__kprobe, struct sock *sk)                                   \
	{                                                                               \
		return handler(sk);                                                     \
	}

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

#endif /* __NETSNOOP_HOOKS_H */
