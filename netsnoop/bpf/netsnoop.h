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
#define MAX_PIDS 16

char LICENSE[] SEC("license") = "GPL";

/* Keep a struct in the object's BTF even though only pointers to it are used, so
 * user space can decode it from there (the layout is written down only once). */
#define EXPORT_STRUCT(name) const struct name *__export_##name __attribute__((unused))
/* The same for an enum whose values user space restates (tests/test_constants.py
 * holds the two to each other). */
#define EXPORT_ENUM(name) const enum name *__enum_##name __attribute__((unused))

/* ---- delivery -------------------------------------------------------------------- */

/* The event channel: a BPF ring buffer (kernels from 5.8 on), or where there is none a
 * perf buffer -- user space turns this map into a BPF_MAP_TYPE_PERF_EVENT_ARRAY (one
 * slot per CPU) and sets use_perf before load; the verifier then prunes the ring
 * branches, whose helpers an older kernel would refuse. Size set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} events SEC(".maps");

const volatile bool use_perf = false;

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

/* Events that could not be handed over (ring or perf buffer full), per CPU. */
PERCPU_COUNTER(lost_events);

/* Count an event that never reached user space (ring buffer or aggregation map full). */
static __always_inline void count_lost(void)
{
	count_one(&lost_events);
}

/* Perf mode builds an event in per-CPU scratch memory before copying it out. A hook
 * that fires in an interrupt can run between another hook's reserve and submit on the
 * same CPU, so each nesting level gets its own slot (three, as the kernel's own
 * bpf_perf_event_output allows); ``full`` counts outputs the perf buffer had no room
 * for, which the reader also learns from PERF_RECORD_LOST on kernels that do not
 * return that error (see transport.PerfReader.lost). */
#define EVENT_MAX 512
#define PERF_NEST 3
struct perf_scratch {
	__u64 full;
	__u32 depth;
	__u32 pad;
	__u8 slot[PERF_NEST][EVENT_MAX];
};
EXPORT_STRUCT(perf_scratch);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct perf_scratch);
} perf_scratch SEC(".maps");

static __always_inline void *__reserve_event(__u64 size)
{
	struct perf_scratch *s;
	__u32 zero = 0, d;
	void *e;

	if (!use_perf) {
		e = bpf_ringbuf_reserve(&events, size, 0);
		if (!e)
			count_lost();
		return e;
	}
	s = bpf_map_lookup_elem(&perf_scratch, &zero);
	if (!s) {
		count_lost();
		return NULL;
	}
	d = s->depth;
	if (d >= PERF_NEST) {
		count_lost();
		return NULL;
	}
	s->depth = d + 1;
	return s->slot[d];
}

/* Memory for one event of a constant size, or NULL (counted as lost); every event
 * reserved is handed to submit_event(). */
#define reserve_event(size)                                                             \
	({                                                                              \
		_Static_assert((size) <= EVENT_MAX, "event larger than EVENT_MAX");     \
		__reserve_event(size);                                                  \
	})

/* Count a failed perf output: a full buffer apart (see struct perf_scratch). */
static __always_inline void count_perf_failure(long err)
{
	struct perf_scratch *s;
	__u32 zero = 0;

	if (err != -28 /* ENOSPC */) {
		count_lost();
		return;
	}
	s = bpf_map_lookup_elem(&perf_scratch, &zero);
	if (s)
		__sync_fetch_and_add(&s->full, 1);
}

/* Hand over an event from reserve_event(); ctx is the hook's own context argument,
 * which bpf_perf_event_output() needs. */
static __always_inline void submit_event(void *ctx, void *e, __u64 size)
{
	struct perf_scratch *s;
	__u32 zero = 0;
	long err;

	if (!use_perf) {
		bpf_ringbuf_submit(e, 0);
		return;
	}
	err = bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, e, size);
	if (err)
		count_perf_failure(err);
	s = bpf_map_lookup_elem(&perf_scratch, &zero);
	if (s && s->depth)
		s->depth--;
}

/* Hand over size bytes that the caller keeps elsewhere (no reservation). */
static __always_inline void output_event(void *ctx, void *data, __u64 size)
{
	long err;

	if (!use_perf) {
		if (bpf_ringbuf_output(&events, data, size, 0))
			count_lost();
		return;
	}
	err = bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, data, size);
	if (err)
		count_perf_failure(err);
}

/* A hash map of __u64 counts by key_type (the -c modes), for count_key(). */
#define COUNT_MAP(name, key_type, entries)                                              \
	struct {                                                                        \
		__uint(type, BPF_MAP_TYPE_HASH);                                        \
		__uint(max_entries, entries);                                           \
		__type(key, key_type);                                                  \
		__type(value, __u64);                                                   \
	} name SEC(".maps")

/* Add n to key's __u64 counter in a hash map (the -c modes), creating it; a full map
 * counts as a lost event. */
static __always_inline void count_key_by(void *map, const void *key, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(map, key);

	if (v) {
		__sync_fetch_and_add(v, n);
		return;
	}
	if (bpf_map_update_elem(map, key, &n, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(map, key); /* created by another CPU meanwhile? */
	if (v)
		__sync_fetch_and_add(v, n);
	else
		count_lost();
}

/* The same, adding one: a count of events. */
static __always_inline void count_key(void *map, const void *key)
{
	count_key_by(map, key, 1);
}

/* ---- filters (read-only globals, set before load) -------------------------------- */

const volatile __u32 filter_pids[MAX_PIDS] = {}; /* tgids, up to the first 0; none = any */
const volatile __u16 filter_family = 0;   /* AF_INET / AF_INET6, 0 = both */
const volatile __u32 filter_lports[MAX_PORTS] = {}; /* host order; 32 bits wide, so that */
const volatile __u32 filter_rports[MAX_PORTS] = {}; /* every list is searched by u32_in() */
const volatile __u32 filter_ports[MAX_PORTS] = {};  /* either end */
const volatile __u64 filter_cgroup = 0;   /* cgroup v2 id (inode of its directory), 0 = any */

/* Whether value is in set, a list of n that ends at its first 0. */
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

/* A port against a port list; an empty list lets every port in. */
static __always_inline bool port_in(const volatile __u32 *ports, __u16 port)
{
	return !ports[0] || u32_in(ports, MAX_PORTS, port);
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

/* -p PID[,PID...]: a process (tgid) against the list. */
static __always_inline bool pid_allowed(__u32 pid)
{
	return !filter_pids[0] || u32_in(filter_pids, MAX_PIDS, pid);
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

/* The family and addresses of a socket's common part: a full socket's, or a request
 * sock's (a connection in its handshake, before it has a socket of its own). */
static __always_inline void read_common_addrs(const struct sock_common *c, struct sock_tuple *t)
{
	t->family = BPF_CORE_READ(c, skc_family);
	if (t->family == AF_INET6) {
		bpf_core_read(t->saddr, sizeof(t->saddr), &c->skc_v6_rcv_saddr);
		bpf_core_read(t->daddr, sizeof(t->daddr), &c->skc_v6_daddr);
	} else {
		/* the 12 bytes after an IPv4 address are zero, never stack leftovers: the
		 * tuple is compared and hashed whole (count keys) */
		__builtin_memset(t->saddr, 0, sizeof(t->saddr));
		__builtin_memset(t->daddr, 0, sizeof(t->daddr));
		BPF_CORE_READ_INTO((__u32 *)t->saddr, c, skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)t->daddr, c, skc_daddr);
	}
}

static __always_inline void read_sock_tuple(const struct sock *sk, struct sock_tuple *t)
{
	read_common_addrs(&sk->__sk_common, t);
	/* inet_sport, not skc_num: the latter is already 0 when CLOSE is traced */
	t->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	t->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

static __always_inline void read_req_tuple(const struct request_sock *req, struct sock_tuple *t)
{
	read_common_addrs(&req->__req_common, t);
	t->sport = BPF_CORE_READ(req, __req_common.skc_num);
	t->dport = bpf_ntohs(BPF_CORE_READ(req, __req_common.skc_dport));
}

/* The --ipv4/--ipv6 and port filters against a socket's tuple. */
static __always_inline bool tuple_allowed(const struct sock_tuple *t)
{
	return family_allowed(t->family) && ports_allowed(t->sport, t->dport);
}

/* The socket behind one of the current task's file descriptors, NULL if it is none. */
static __always_inline const struct sock *fd_sock(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *file = NULL;
	struct socket *sock;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	/* a socket's file and its struct socket point at each other (any other file's
	 * private_data is something else) */
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

/* A kfree_skb reason that is no drop: SKB_CONSUMED, a buffer freed after use (kernels
 * that have it report consume_skb() through kfree_skb too). */
static __always_inline bool reason_is_consumed(__u32 reason)
{
	return bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
	       reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED);
}

/* ---- network namespaces ---------------------------------------------------------- */

/* A namespace is named by its inode, as /proc/PID/ns/net and `ip netns` name it. */

static __always_inline __u32 sock_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* 0 for no device */
static __always_inline __u32 dev_netns(const struct net_device *dev)
{
	return dev ? BPF_CORE_READ(dev, nd_net.net, ns.inum) : 0;
}

/* A packet's: its socket's when one has it (sk, NULL for none), else its device's (the
 * one it arrived on or leaves by). */
static __always_inline __u32 packet_netns(const struct sk_buff *skb, const struct sock *sk)
{
	return sk ? sock_netns(sk) : dev_netns(BPF_CORE_READ(skb, dev));
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
