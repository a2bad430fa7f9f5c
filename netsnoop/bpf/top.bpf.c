// SPDX-License-Identifier: GPL-2.0
/* top: TCP bytes sent and received per process and connection, summed in the kernel
 * (tcptop). User space takes the map's entries (lookup-and-delete) every interval;
 * no per-send event crosses to user space. */
#include "traffic.h"

struct conn_key {
	__u32 pid;
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};
EXPORT_STRUCT(conn_key);

struct conn_bytes {
	__u64 rx;
	__u64 tx;
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(conn_bytes);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct conn_key);
	__type(value, struct conn_bytes);
} conns SEC(".maps");

static __always_inline struct conn_bytes *conn_entry(const struct conn_key *key)
{
	struct conn_bytes *v = bpf_map_lookup_elem(&conns, key), fresh = {};

	if (v)
		return v;
	bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	/* BPF_NOEXIST: if another CPU created it meanwhile, keep and use theirs */
	bpf_map_update_elem(&conns, key, &fresh, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&conns, key);
	if (!v)
		count_lost(); /* the map is full */
	return v;
}

static __always_inline int on_bytes(const struct sock *sk, long bytes, bool send)
{
	struct conn_key key = {};
	struct conn_bytes *v;
	struct sock_tuple t;

	if (bytes <= 0 || !sk || !sock_is_tcp(sk))
		return 0;
	key.pid = current_pid();
	if (!pid_allowed(key.pid) || !cgroup_allowed())
		return 0;
	read_sock_tuple(sk, &t);
	if (!family_allowed(t.family) || !ports_allowed(t.sport, t.dport))
		return 0;
	key.family = t.family;
	key.lport = t.sport;
	key.rport = t.dport;
	__builtin_memcpy(key.laddr, t.saddr, 16);
	__builtin_memcpy(key.raddr, t.daddr, 16);

	v = conn_entry(&key);
	if (!v)
		return 0;
	if (send)
		__sync_fetch_and_add(&v->tx, bytes);
	else
		__sync_fetch_and_add(&v->rx, bytes);
	return 0;
}

static __always_inline int on_send(const struct sock *sk, long bytes)
{
	return on_bytes(sk, bytes, true);
}

static __always_inline int on_recv(const struct sock *sk, long bytes)
{
	return on_bytes(sk, bytes, false);
}

SOCK_SEND_HOOKS(on_send)
SOCK_RECV_HOOKS(on_recv)
