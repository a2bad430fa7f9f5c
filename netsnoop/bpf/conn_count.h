/* The count modes of connect and accept (-c, and export): each connection adds one to
 * a counter in a hash map instead of sending a row, and user space reads the map when
 * it reports. count_flags says which fields key the count (the others stay 0), so the
 * same program counts per destination for a terminal and per namespace for a fleet. */
#ifndef __NETSNOOP_CONN_COUNT_H
#define __NETSNOOP_CONN_COUNT_H

#include "conn.h"

enum count_flags {
	COUNT_ADDRS = 1,   /* the addresses (accept: the local one) */
	COUNT_PORT = 2,    /* connect: the remote port, accept: the local one */
	COUNT_LATENCY = 4, /* connect --outcome: a latency histogram per key too */
};
EXPORT_ENUM(count_flags);

const volatile __u8 count_only = 0; /* count instead of emitting rows */
const volatile __u8 count_flags = COUNT_ADDRS | COUNT_PORT;

struct conn_count_key {
	__u8 laddr[16];
	__u8 raddr[16];
	__u32 netns;    /* always: the socket's network namespace (inode) */
	__s32 err;      /* connect --outcome: conn_error() of an attempt that closed */
	__u16 port;
	__u16 family;
	__u8 state;     /* connect --outcome: the state the attempt reached, 0 otherwise */
	__u8 pad[3];    /* hashed with the rest: always zero */
};
EXPORT_STRUCT(conn_count_key);

/* Sized for a host's destinations between two reads (export empties it every
 * second); a full map counts what it could not take as lost events. */
COUNT_MAP(counts, struct conn_count_key, 16384);

/* Whether counting must know the process: only to filter by it (-p, -u, --cgroup),
 * as no count key holds one. The settings are constants of the loaded program, so the
 * verifier drops the path not taken. */
static __always_inline bool count_needs_owner(void)
{
	return filter_pids[0] || filter_uid != 0xffffffff || filter_cgroup;
}

/* Whether counting must read the socket's ends: to key by them or filter by them. */
static __always_inline bool count_needs_tuple(void)
{
	return (count_flags & (COUNT_ADDRS | COUNT_PORT)) || filter_family || filter_lports[0] || filter_rports[0] ||
	       filter_ports[0];
}

/* What a count needs of a socket (of TCP) and of the current task, filters passed:
 * its namespace in o->netns, and only what the key or a filter reads (process,
 * ends); false when filtered out. Export counts per namespace: it reads no more. */
static __always_inline bool count_sock_allowed(const struct sock *sk, struct conn_owner *o, struct sock_tuple *t,
					       __u64 now)
{
	if (!sock_is_tcp(sk))
		return false;
	o->start_ns = now;
	if (count_needs_owner()) {
		owner_current(o, now);
		if (!owner_allowed(o))
			return false;
	}
	if (count_needs_tuple())
		return sock_allowed(sk, t, o);
	o->netns = sock_netns(sk);
	return netns_allowed(o->netns);
}

/* The count key of a connection in namespace netns, with the fields count_flags asks
 * for (remote: connect's remote address too); the caller adds an outcome. */
static __always_inline void count_key_of(struct conn_count_key *k, const struct sock_tuple *t, __u32 netns,
					 __u16 port, bool remote)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = netns;
	if (count_flags & COUNT_PORT)
		k->port = port;
	if (count_flags & COUNT_ADDRS) {
		k->family = t->family;
		__builtin_memcpy(k->laddr, t->saddr, 16);
		if (remote)
			__builtin_memcpy(k->raddr, t->daddr, 16);
	}
}

#endif /* __NETSNOOP_CONN_COUNT_H */
