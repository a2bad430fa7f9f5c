/* Shared by the tools whose events come from timers and softirqs (retrans, drop): who
 * owns a socket (process and cgroup), and the -p and --cgroup filters judged on it. */
#ifndef __NETSNOOP_OWNER_H
#define __NETSNOOP_OWNER_H

#include "netsnoop.h"
#include "hooks.h"
#include "where.h"

/* The process a socket belongs to, for the tools whose events come from timers and
 * softirqs (retrans, drop), where whoever is on the CPU says nothing. Filled in process
 * context: when a process connects the socket or makes it listen (CLOSE -> SYN_SENT,
 * CLOSE -> LISTEN, inside connect() and listen()) and whenever one sends on or receives
 * from it; forgotten when the socket is destroyed,
 * so a reused address never inherits an owner. */
/* 0 when nothing needs an owner (-c tables without -p or --cgroup): the hooks return at
 * once, which keeps them from holding the CPU's BPF slot that a classic tracepoint
 * interrupting them needs. */
const volatile __u8 with_owner = 1;

struct sock_owner {
	__u64 cgroup; /* the owner's cgroup v2 id (its directory's inode) */
	__u32 pid;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768); /* LRU: an idle socket may lose its owner, never get a wrong one */
	__type(key, __u64);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

static __always_inline int owner_is_current(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	__u32 pid = current_pid();
	struct sock_owner *o;
	struct sock_owner fresh = {.pid = pid};

	if (!with_owner || !sk || !pid)
		return 0;
	o = bpf_map_lookup_elem(&sock_owners, &key);
	if (o && o->pid == pid)
		return 0;
	fresh.cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	bpf_map_update_elem(&sock_owners, &key, &fresh, BPF_ANY);
	return 0;
}

static __always_inline int owner_on_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) /* inside connect() or listen() */
		owner_is_current(sk);
	return 0;
}

static __always_inline int owner_forget(void *ctx, const struct sock *sk)
{
	__u64 key = (__u64)sk;

	if (!with_owner)
		return 0;
	bpf_map_delete_elem(&sock_owners, &key);
	return 0;
}

/* The owner of `sk`, NULL when none is known. */
static __always_inline const struct sock_owner *owner_lookup(const struct sock *sk)
{
	__u64 key = (__u64)sk;

	return sk ? bpf_map_lookup_elem(&sock_owners, &key) : NULL;
}

/* -p and --cgroup (where.h, netsnoop.h) against a socket's owner: a socket whose owner
 * is unknown cannot be told to be theirs, so it is left out while either is set. */
static __always_inline bool owner_allowed(const struct sock_owner *o)
{
	if (!filter_pids[0] && !filter_cgroup)
		return true;
	return o && pid_allowed(o->pid) && (!filter_cgroup || o->cgroup == filter_cgroup);
}

/* Whether an owner must be looked up: a row shows it, or -p/--cgroup judge it (the -c
 * tables show none). */
static __always_inline bool owner_wanted(bool counting)
{
	return with_owner && (!counting || filter_pids[0] || filter_cgroup);
}

/* Whether a row about sk, in namespace netns, passes --netns, -p and --cgroup; *o is then
 * its owner as far as one is wanted (NULL: unknown, or not wanted). */
static __always_inline bool sock_passes(const struct sock *sk, __u32 netns, bool counting,
					const struct sock_owner **o)
{
	if (!netns_allowed(netns))
		return false;
	*o = owner_wanted(counting) ? owner_lookup(sk) : NULL;
	return owner_allowed(*o);
}

/* The owner into a row's pid/comm/cgroup (0, "" and 0 when none is known). */
static __always_inline void owner_copy(const struct sock_owner *o, __u32 *pid, char *comm, __u64 *cgroup)
{
	if (o) {
		*pid = o->pid;
		*cgroup = o->cgroup;
		__builtin_memcpy(comm, o->comm, TASK_COMM_LEN);
	} else {
		*pid = 0;
		*cgroup = 0;
		comm[0] = 0;
	}
}

/* The hooks that keep sock_owners: groups send, recv, set_state and forget (all
 * optional: without them rows carry no owner). */
#define SOCK_OWNER_HOOKS                                                                \
	SOCK_IO_HOOKS(owner_is_current)                                                 \
	SET_STATE_HOOKS(owner_on_state)                                                 \
	TCP_SK_EVENT_HOOKS(forget, tcp_destroy_sock, owner_forget)

#endif /* __NETSNOOP_OWNER_H */
