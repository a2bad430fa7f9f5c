// SPDX-License-Identifier: GPL-2.0
/* top: TCP bytes sent and received per process and connection, summed in the kernel
 * (tcptop). User space takes the map's entries (lookup-and-delete) every interval;
 * no per-send event crosses to user space. */
#include "traffic.h"

/* One entry per socket and process. The key is what can be had almost without
 * reading the socket: its address and, against reuse of that address by a later
 * socket within the interval, its two ports (network order; inet_sport, since
 * skc_num is cleared when a socket still being read goes to CLOSE). The addresses
 * are read once, when the entry is made; every further call is a lookup and an add. */
struct conn_key {
	__u64 sk;
	__u32 pid;
	__u16 sport;
	__u16 dport;
};
EXPORT_STRUCT(conn_key);

struct conn_bytes {
	__u64 rx;
	__u64 tx;
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 excluded; /* not TCP, or filtered out: counted nowhere, remembered so */
	__u8 pad;
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[TASK_COMM_LEN];
};
EXPORT_STRUCT(conn_bytes);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct conn_key);
	__type(value, struct conn_bytes);
} conns SEC(".maps");

static __always_inline struct conn_bytes *new_entry(const struct sock *sk, const struct conn_key *key)
{
	struct conn_bytes fresh = {}, *v;
	struct sock_tuple t;

	if (sock_is_tcp(sk)) {
		read_sock_tuple(sk, &t);
		fresh.excluded = !family_allowed(t.family) || !ports_allowed(t.sport, t.dport);
		fresh.family = t.family;
		fresh.lport = t.sport;
		fresh.rport = t.dport;
		__builtin_memcpy(fresh.laddr, t.saddr, 16);
		__builtin_memcpy(fresh.raddr, t.daddr, 16);
	} else {
		fresh.excluded = 1;
	}
	bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	/* BPF_NOEXIST: if another CPU created it meanwhile, keep and use theirs */
	bpf_map_update_elem(&conns, key, &fresh, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&conns, key);
	if (!v && !fresh.excluded)
		count_lost(); /* the map is full */
	return v;
}

static __always_inline int on_bytes(const struct sock *sk, long bytes, bool send)
{
	struct conn_key key = {};
	struct conn_bytes *v;

	if (bytes <= 0 || !sk)
		return 0;
	key.pid = current_pid();
	if (!pid_allowed(key.pid) || !cgroup_allowed())
		return 0;
	key.sk = (__u64)sk;
	key.sport = BPF_CORE_READ((struct inet_sock *)sk, inet_sport);
	key.dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	v = bpf_map_lookup_elem(&conns, &key);
	if (!v)
		v = new_entry(sk, &key);
	if (!v || v->excluded)
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
