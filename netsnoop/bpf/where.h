/* Who and where, for the connection tools (states, life, connect, accept, tracer,
 * connlat): the network namespace and process filters they share, declared once.
 * A namespace is the inode of its net (what /proc/PID/ns/net and `ip netns` name);
 * a process is its tgid. Both lists end at the first 0; an empty list lets all in. */
#ifndef __NETSNOOP_WHERE_H
#define __NETSNOOP_WHERE_H

#include "netsnoop.h"

#define MAX_NETNS 8
#define MAX_PIDS 16

const volatile __u32 filter_netns[MAX_NETNS] = {};
const volatile __u32 filter_pids[MAX_PIDS] = {};

static __always_inline bool u32_in(const volatile __u32 *set, int n, __u32 value)
{
#pragma unroll
	for (int i = 0; i < n; i++) {
		if (set[i] == 0)
			return false;
		if (set[i] == value)
			return true;
	}
	return false;
}

static __always_inline bool netns_allowed(__u32 netns)
{
	return !filter_netns[0] || u32_in(filter_netns, MAX_NETNS, netns);
}

static __always_inline bool pids_allowed(__u32 pid)
{
	return !filter_pids[0] || u32_in(filter_pids, MAX_PIDS, pid);
}

/* The socket's network namespace: one CO-RE read. */
static __always_inline __u32 sock_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

#endif /* __NETSNOOP_WHERE_H */
