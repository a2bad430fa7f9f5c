// SPDX-License-Identifier: GPL-2.0
/* solisten: every successful listen() on a TCP socket (solisten).
 *
 * Hooked at the listen syscall rather than at the CLOSE->LISTEN state change: the
 * state change is traced before an unbound socket gets its port (so the port would
 * read 0), and a listen() that only changes the backlog of a listening socket
 * changes no state at all. At sys_exit the socket is found from the fd. */
#include "where.h"

struct event {
	__u64 cgroup; /* the listening process's cgroup v2 id */
	__u64 ts_ns;
	__u32 pid;
	__u32 netns;
	__u32 backlog;
	__u16 family;
	__u16 lport;
	__u8 laddr[16];
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(event);

/* The fd passed to listen(), per thread, from sys_enter to sys_exit. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __s32);
} listen_fds SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_listen")
int listen_enter__tracepoint(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__s32 fd = ctx->args[0];

	if (!pid_allowed(id >> 32) || !cgroup_allowed())
		return 0;
	bpf_map_update_elem(&listen_fds, &id, &fd, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_listen")
int listen_exit__tracepoint(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__s32 *fd = bpf_map_lookup_elem(&listen_fds, &id), sock_fd;
	const struct sock *sk;
	struct sock_tuple t;
	struct event *e;
	__u32 netns;

	if (!fd)
		return 0;
	sock_fd = *fd;
	bpf_map_delete_elem(&listen_fds, &id);
	if (ctx->ret != 0)
		return 0;
	sk = fd_sock(sock_fd);
	if (!sk || !sock_is_tcp(sk))
		return 0;
	read_sock_tuple(sk, &t);
	if (t.family != AF_INET && t.family != AF_INET6)
		return 0;
	netns = sock_netns(sk);
	if (!netns_allowed(netns))
		return 0;

	e = reserve_event(sizeof(*e));
	if (!e)
		return 0;
	e->cgroup = bpf_get_current_cgroup_id();
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->netns = netns;
	e->backlog = BPF_CORE_READ(sk, sk_max_ack_backlog);
	e->family = t.family;
	e->lport = t.sport;
	__builtin_memcpy(e->laddr, t.saddr, 16);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	submit_event(ctx, e, sizeof(*e));
	return 0;
}
