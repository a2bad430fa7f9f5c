/* Where, for the connection tools (states, life, connect, accept, tracer, connlat):
 * the network namespace filter they share, declared once (the process list,
 * filter_pids, is every tool's: netsnoop.h). A namespace is the inode of its net
 * (what /proc/PID/ns/net and `ip netns` name; read by sock_netns() and its kin in
 * netsnoop.h); the list ends at the first 0; an empty list lets all in. */
#ifndef __NETSNOOP_WHERE_H
#define __NETSNOOP_WHERE_H

#include "netsnoop.h"

#define MAX_NETNS 8

const volatile __u32 filter_netns[MAX_NETNS] = {};

static __always_inline bool netns_allowed(__u32 netns)
{
	return !filter_netns[0] || u32_in(filter_netns, MAX_NETNS, netns);
}

#endif /* __NETSNOOP_WHERE_H */
