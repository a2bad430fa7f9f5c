// SPDX-License-Identifier: GPL-2.0
/* states: every TCP state change, with the time spent in the old state (tcpstates). */
#include "hooks.h"
#include "where.h"

struct event {
	__u64 skaddr;
	__u64 ts_ns;
	__u64 delta_ns; /* time in oldstate, 0 when its start was not seen */
	__u64 cgroup;   /* of the task on the CPU (C-PID) */
	__u32 pid;
	__u32 netns;    /* the socket's network namespace (inode) */
	struct sock_tuple t; /* decoded flat: saddr, daddr, sport, dport, family */
	__u8 oldstate;
	__u8 newstate;
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(event);

/* 0 when no row shows NETNS or CONTAINER (text without -w): the hook then reads the
 * namespace only for --netns and the cgroup only for --cgroup, three helper calls fewer
 * per change. */
const volatile __u8 with_where = 1;

/* Each socket's current state and when it entered it; deleted at CLOSE, LRU-bounded. */
struct entered_state {
	__u64 ns;
	__u32 state;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct entered_state);
} entered SEC(".maps");

/* Changes that show an earlier one never reached the hook: the socket leaves a state
 * other than the one it was last seen entering (or a new socket is born where an old
 * one was last seen alive). Under storms the kernel at times does not run the hook, and
 * does not count that either. Each is one change or more not shown. */
PERCPU_COUNTER(changes_not_seen);

static __always_inline int on_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	struct sock_tuple t;
	__u64 key = (__u64)sk, now = bpf_ktime_get_ns(), delta = 0;
	struct entered_state *since, entry = { .ns = now, .state = newstate };
	__u64 cgroup;
	__u32 pid, netns;
	struct event *e;

	/* close() after shutdown(SHUT_WR) calls tcp_set_state() with the state the socket
	 * is already in (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK): not a change, no row,
	 * and the time in that state goes on counting. */
	if (oldstate == newstate || !sock_is_tcp(sk))
		return 0;
	read_sock_tuple(sk, &t);
	if (!tuple_allowed(&t))
		return 0;
	netns = with_where || filter_netns[0] ? sock_netns(sk) : 0;
	if (!netns_allowed(netns))
		return 0;

	since = bpf_map_lookup_elem(&entered, &key);
	if (since && since->state == oldstate) {
		delta = now - since->ns;
	} else if (since) { /* how long it was in oldstate is unknown: 0, as when unseen */
		count_one(&changes_not_seen);
	}
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&entered, &key);
	else
		bpf_map_update_elem(&entered, &key, &entry, BPF_ANY);

	pid = current_pid();
	if (!pid_allowed(pid))
		return 0;
	cgroup = with_where || filter_cgroup ? bpf_get_current_cgroup_id() : 0;
	if (filter_cgroup && cgroup != filter_cgroup)
		return 0;
	e = reserve_event(sizeof(*e));
	if (!e)
		return 0;
	e->skaddr = key;
	e->ts_ns = now;
	e->delta_ns = delta;
	e->cgroup = cgroup;
	e->pid = pid;
	e->netns = netns;
	e->t = t;
	e->oldstate = oldstate;
	e->newstate = newstate;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	submit_event(ctx, e, sizeof(*e));
	return 0;
}

SET_STATE_HOOKS(on_state)
