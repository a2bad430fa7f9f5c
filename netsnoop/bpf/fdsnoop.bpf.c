// SPDX-License-Identifier: GPL-2.0
/* fdsnoop: file descriptors passed over Unix sockets as SCM_RIGHTS control
 * messages, on send and on receive (sofdsnoop).
 *
 * Only syscall tracepoints see the caller's message header, so the socket fd and
 * the user pointer are remembered at sys_enter and the control messages are read
 * from user memory at sys_exit, once the call has succeeded: a send that failed
 * passed nothing, and a receive has only then written the new descriptors. */
#include "where.h"

#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define CMSG_HDR_LEN ((sizeof(struct cmsghdr) + 7) & ~7UL) /* CMSG_ALIGN */
#define MAX_MSGS 8   /* messages looked at per sendmmsg/recvmmsg */
#define MAX_CMSGS 4  /* control messages looked at per message */
#define MAX_FDS 32   /* descriptors reported per control message */

enum action { ACTION_SEND, ACTION_RECV };
EXPORT_ENUM(action);

/* One passed descriptor (a message carrying n descriptors gives n events). */
struct event {
	__u32 netns;   /* the sending/receiving socket's network namespace (inode) */
	__u64 ts_ns;
	__u32 pid;
	__u32 tid;
	__s32 sock_fd;
	__s32 fd;
	__u8 action;
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(event);

const volatile __u32 filter_tid = 0;                 /* 0 = any */
const volatile char filter_comm[TASK_COMM_LEN] = {}; /* substring of comm, "" = any */

/* A send/receive in flight on one thread, from sys_enter to sys_exit. */
struct call {
	__u32 netns;    /* the socket's, judged at sys_enter */
	__u64 msgs;     /* user pointer: one struct user_msghdr, or a struct mmsghdr array */
	__s32 sock_fd;
	__u8 action;
	__u8 multi;     /* sendmmsg/recvmmsg */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct call);
} calls SEC(".maps");

/* Does the current comm contain filter_comm (bcc's -n: a substring match)? */
static __always_inline bool comm_allowed(void)
{
	char comm[TASK_COMM_LEN];
	int i, j;

	if (!filter_comm[0])
		return true;
	bpf_get_current_comm(comm, sizeof(comm));
	for (i = 0; i < TASK_COMM_LEN && comm[i]; i++) {
		for (j = 0; i + j < TASK_COMM_LEN && filter_comm[j]; j++)
			if (comm[i + j] != filter_comm[j])
				break;
		/* comm ends in NUL, so a full match always stops before its end */
		if (!filter_comm[j & (TASK_COMM_LEN - 1)])
			return true;
	}
	return false;
}

static __always_inline bool thread_allowed(__u64 id)
{
	return pid_allowed(id >> 32) && (!filter_tid || filter_tid == (__u32)id) && comm_allowed();
}

static __always_inline int on_enter(int sock_fd, __u64 msgs, __u8 action, __u8 multi)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call c = { .msgs = msgs, .sock_fd = sock_fd, .action = action, .multi = multi };
	const struct sock *sk;
	__u64 controllen;

	/* The common case, a single message without control data, costs no map update. */
	if (!multi &&
	    (bpf_probe_read_user(&controllen, sizeof(controllen),
				 &((struct user_msghdr *)msgs)->msg_controllen) ||
	     controllen < sizeof(struct cmsghdr)))
		return 0;
	if (!thread_allowed(id) || !cgroup_allowed())
		return 0;
	sk = fd_sock(sock_fd);
	c.netns = sk ? sock_netns(sk) : 0;
	if (!netns_allowed(c.netns))
		return 0;
	bpf_map_update_elem(&calls, &id, &c, BPF_ANY);
	return 0;
}

/* The loops below live in non-inlined functions: the verifier checks a global function
 * once, on its own, instead of once per iteration of the loop that calls it. The ring
 * buffer's path is global; the perf buffer's needs the hook's ctx (for
 * bpf_perf_event_output), which a global function cannot take before 6.8, so it has
 * static copies, checked with their caller's state (slower to verify: ~0.5 s more to
 * start). use_perf, a constant to the verifier, leaves the other path unchecked. */

/* One event per descriptor in a SCM_RIGHTS payload of n ints at user address data;
 * sock is the call's action << 32 | its socket fd. Scalars rather than a pointer to
 * the struct call, and no more fields than these: the verifier walks these loops per
 * message and per descriptor, and the perf transport's variant is near its limit
 * (with the cgroup id stored here too it is refused; user space reads the process's
 * cgroup instead, as it reads the descriptors' names). */
static __always_inline int emit_fds_in(void *ctx, __u64 data, __u32 n, __u32 netns, __u64 sock)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct event *e;
	__s32 fd;
	int k;

	for (k = 0; k < MAX_FDS && k < n; k++) {
		if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(data + k * sizeof(fd))))
			return 0;
		e = reserve_event(sizeof(*e));
		if (!e)
			return 0;
		e->netns = netns;
		e->ts_ns = bpf_ktime_get_ns();
		e->pid = id >> 32;
		e->tid = (__u32)id;
		e->sock_fd = (__s32)sock;
		e->fd = fd;
		e->action = sock >> 32;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		submit_event(ctx, e, sizeof(*e));
	}
	return 0;
}

__noinline int emit_fds(__u64 data, __u32 n, __u32 netns, __u64 sock)
{
	if (use_perf)
		return 0; /* not called then: emit_fds_perf is */
	return emit_fds_in(NULL, data, n, netns, sock);
}

static __noinline int emit_fds_perf(void *ctx, __u64 data, __u32 n, __u32 netns, __u64 sock)
{
	return emit_fds_in(ctx, data, n, netns, sock);
}

/* Every SCM_RIGHTS control message of one message header (user memory). */
static __always_inline int scan_msg_in(void *ctx, __u64 uhdr, __u32 netns, __u64 sock, bool perf)
{
	struct user_msghdr h;
	struct cmsghdr cm;
	__u64 pos, end, data, len;
	int i;

	if (bpf_probe_read_user(&h, sizeof(h), (void *)uhdr))
		return 0;
	pos = (__u64)h.msg_control;
	end = pos + h.msg_controllen;
	for (i = 0; i < MAX_CMSGS; i++) {
		if (pos + sizeof(cm) > end || bpf_probe_read_user(&cm, sizeof(cm), (void *)pos))
			return 0;
		if (cm.cmsg_len < sizeof(cm))
			return 0;
		if (cm.cmsg_level == SOL_SOCKET && cm.cmsg_type == SCM_RIGHTS) {
			data = pos + CMSG_HDR_LEN;
			len = pos + cm.cmsg_len > end ? end - data : cm.cmsg_len - CMSG_HDR_LEN;
			if (perf)
				emit_fds_perf(ctx, data, len / sizeof(__s32), netns, sock);
			else
				emit_fds(data, len / sizeof(__s32), netns, sock);
		}
		pos += (cm.cmsg_len + 7) & ~7UL;
	}
	return 0;
}

__noinline int scan_msg(__u64 uhdr, __u32 netns, __u64 sock)
{
	if (use_perf)
		return 0; /* not called then: scan_msg_perf is */
	return scan_msg_in(NULL, uhdr, netns, sock, false);
}

static __noinline int scan_msg_perf(void *ctx, __u64 uhdr, __u32 netns, __u64 sock)
{
	return scan_msg_in(ctx, uhdr, netns, sock, true);
}

static __always_inline int scan(void *ctx, __u64 uhdr, __u32 netns, __u64 sock)
{
	return use_perf ? scan_msg_perf(ctx, uhdr, netns, sock) : scan_msg(uhdr, netns, sock);
}

static __always_inline int on_exit(void *ctx, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *found = bpf_map_lookup_elem(&calls, &id), c;
	__u64 sock;
	int i;

	if (!found)
		return 0;
	c = *found;
	bpf_map_delete_elem(&calls, &id);
	sock = (__u64)c.action << 32 | (__u32)c.sock_fd;
	if (ret < 0)
		return 0;
	if (!c.multi)
		return scan(ctx, c.msgs, c.netns, sock);
	/* sendmmsg/recvmmsg return how many messages went through */
	for (i = 0; i < MAX_MSGS && i < ret; i++)
		scan(ctx, c.msgs + i * sizeof(struct mmsghdr), c.netns, sock);
	return 0;
}

/* sys_enter_<name>(fd, msg, ...) and sys_exit_<name> for one syscall. */
#define SYSCALL_HOOKS(name, action, multi)                                              \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                     \
	int name##_enter__tracepoint(struct trace_event_raw_sys_enter *ctx)             \
	{                                                                               \
		return on_enter((int)ctx->args[0], ctx->args[1], action, multi);        \
	}                                                                               \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                      \
	int name##_exit__tracepoint(struct trace_event_raw_sys_exit *ctx)               \
	{                                                                               \
		return on_exit(ctx, ctx->ret);                                          \
	}

SYSCALL_HOOKS(sendmsg, ACTION_SEND, 0)
SYSCALL_HOOKS(recvmsg, ACTION_RECV, 0)
SYSCALL_HOOKS(sendmmsg, ACTION_SEND, 1)
SYSCALL_HOOKS(recvmmsg, ACTION_RECV, 1)
