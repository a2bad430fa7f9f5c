/* Shared by every netsnoop BPF program: the event channel, the lost-event counter,
 * the common filters (set from user space before load), and socket readers.
 * Each tool includes this once; its own event struct lives in its .bpf.c. */
#ifndef __NETSNOOP_H
#define __NETSNOOP_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define TASK_COMM_LEN 16
#define MAX_PORTS 16

char LICENSE[] SEC("license") = "GPL";

/* Keep a struct in the object's BTF even though only pointers to it are used, so
 * user space can decode it from there (the layout is written down only once). */
#define EXPORT_STRUCT(name) const struct name *__export_##name __attribute__((unused))
/* The same for an enum whose values user space restates (tests/test_constants.py
 * holds the two to each other). */
#define EXPORT_ENUM(name) const enum name *__enum_##name __attribute__((unused))

/* ---- delivery -------------------------------------------------------------------- */

/* Size set by the loader (default 8 MiB). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} events SEC(".maps");

/* A count kept per CPU in a one-slot array; user space sums it (BPFObject.counter). */
#define PERCPU_COUNTER(name)                                                            \
	struct {                                                                        \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                \
		__uint(max_entries, 1);                                                 \
		__type(key, __u32);                                                     \
		__type(value, __u64);                                                   \
	} name SEC(".maps")

static __always_inline void count_one(void *counter)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(counter, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Events that could not be reserved in the ring buffer, per CPU. */
PERCPU_COUNTER(lost_events);

/* Count an event that never reached user space (ring buffer or aggregation map full). */
static __always_inline void count_lost(void)
{
	count_one(&lost_events);
}

static __always_inline void *reserve_event(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);

	if (!e)
		count_lost();
	return e;
}

/* Add one to key's __u64 counter in a hash map (the -c modes), creating it; a full map
 * counts as a lost event. */
static __always_inline void count_key(void *map, const void *key)
{
	__u64 one = 1, *n = bpf_map_lookup_elem(map, key);

	if (n) {
		__sync_fetch_and_add(n, 1);
		return;
	}
	if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
		return;
	n = bpf_map_lookup_elem(map, key); /* created by another CPU meanwhile? */
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		count_lost();
}

/* ---- filters (read-only globals, set before load) -------------------------------- */

const volatile __u32 filter_pid = 0;      /* tgid, 0 = any */
const volatile __u16 filter_family = 0;   /* AF_INET / AF_INET6, 0 = both */
const volatile __u16 filter_lports[MAX_PORTS] = {};
const volatile __u16 filter_rports[MAX_PORTS] = {};
const volatile __u16 filter_ports[MAX_PORTS] = {}; /* either end */
const volatile __u64 filter_cgroup = 0;   /* cgroup v2 id (inode of its directory), 0 = any */

static __always_inline bool port_in(const volatile __u16 *ports, __u16 port)
{
	if (ports[0] == 0)
		return true;
#pragma unroll
	for (int i = 0; i < MAX_PORTS; i++) {
		if (ports[i] == 0)
			return false;
		if (ports[i] == port)
			return true;
	}
	return false;
}

/* Local/remote/either-end port filters, host byte order. */
static __always_inline bool ports_allowed(__u16 lport, __u16 rport)
{
	if (!port_in(filter_lports, lport) || !port_in(filter_rports, rport))
		return false;
	if (filter_ports[0] && !port_in(filter_ports, lport) && !port_in(filter_ports, rport))
		return false;
	return true;
}

static __always_inline bool family_allowed(__u16 family)
{
	return !filter_family || filter_family == family;
}

static __always_inline bool pid_allowed(__u32 pid)
{
	return !filter_pid || filter_pid == pid;
}

/* The current task's cgroup v2 id against --cgroup. */
static __always_inline bool cgroup_allowed(void)
{
	return !filter_cgroup || bpf_get_current_cgroup_id() == filter_cgroup;
}

static __always_inline __u32 current_pid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* ---- sockets --------------------------------------------------------------------- */

/* Addresses and ports of a socket, host byte order ports, addresses as 16 bytes
 * (IPv4 in the first 4). */
struct sock_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
};

static __always_inline void read_sock_tuple(const struct sock *sk, struct sock_tuple *t)
{
	t->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	/* inet_sport, not skc_num: the latter is already 0 when CLOSE is traced */
	t->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	t->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (t->family == AF_INET6) {
		bpf_core_read(t->saddr, sizeof(t->saddr), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(t->daddr, sizeof(t->daddr), &sk->__sk_common.skc_v6_daddr);
	} else {
		/* the 12 bytes after an IPv4 address are zero, never stack leftovers: the
		 * tuple is compared and hashed whole (count keys) */
		__builtin_memset(t->saddr, 0, sizeof(t->saddr));
		__builtin_memset(t->daddr, 0, sizeof(t->daddr));
		BPF_CORE_READ_INTO((__u32 *)t->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)t->daddr, sk, __sk_common.skc_daddr);
	}
}

/* The --ipv4/--ipv6 and port filters against a socket's tuple. */
static __always_inline bool tuple_allowed(const struct sock_tuple *t)
{
	return family_allowed(t->family) && ports_allowed(t->sport, t->dport);
}

/* A kfree_skb reason that is no drop: SKB_CONSUMED, a buffer freed after use (kernels
 * that have it report consume_skb() through kfree_skb too). */
static __always_inline bool reason_is_consumed(__u32 reason)
{
	return bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
	       reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED);
}

/* ---- packets --------------------------------------------------------------------- */

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* The tuple and TCP flags of a TCP packet whose IP header starts at l3 (protocol proto,
 * host order), read by wire offsets rather than kernel structs; false for anything else.
 * IPv4 addresses are zero-padded to 16 bytes, as in read_sock_tuple(). */
static __always_inline bool read_tcp_headers(const unsigned char *l3, __u16 proto, struct sock_tuple *t,
					     __u8 *flags)
{
	__u8 ip[40], th[14];
	__u32 off;

	if (proto == ETH_P_IP) {
		if (bpf_probe_read_kernel(ip, 20, l3) || ip[0] >> 4 != 4 || ip[9] != IPPROTO_TCP)
			return false;
		t->family = AF_INET;
		__builtin_memset(t->saddr, 0, sizeof(t->saddr));
		__builtin_memset(t->daddr, 0, sizeof(t->daddr));
		__builtin_memcpy(t->saddr, &ip[12], 4);
		__builtin_memcpy(t->daddr, &ip[16], 4);
		off = (ip[0] & 0xf) * 4;
	} else if (proto == ETH_P_IPV6) {
		if (bpf_probe_read_kernel(ip, 40, l3) || ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP)
			return false;
		t->family = AF_INET6;
		__builtin_memcpy(t->saddr, &ip[8], 16);
		__builtin_memcpy(t->daddr, &ip[24], 16);
		off = 40;
	} else {
		return false;
	}
	if (bpf_probe_read_kernel(th, sizeof(th), l3 + off))
		return false;
	t->sport = (th[0] << 8) | th[1];
	t->dport = (th[2] << 8) | th[3];
	*flags = th[13];
	return true;
}

/* The same for a packet buffer whose network header is set (past the link layer). */
static __always_inline bool read_skb_tcp(const struct sk_buff *skb, struct sock_tuple *t, __u8 *flags)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 off = BPF_CORE_READ(skb, network_header);

	return read_tcp_headers(head + off, bpf_ntohs(BPF_CORE_READ(skb, protocol)), t, flags);
}

static __always_inline bool sock_is_tcp(const struct sock *sk)
{
	/* a bitfield before 5.6, a plain u16 since: the probed read copes with both */
	return BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) == IPPROTO_TCP;
}

#endif /* __NETSNOOP_H */
