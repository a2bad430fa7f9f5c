// SPDX-License-Identifier: GPL-2.0
/* subnet: TCP bytes sent, summed per destination subnet and network namespace in the
 * kernel (tcpsubnet). The subnets are read-only globals; the first one that matches
 * wins. Per-CPU counters only grow: user space reports the difference between two
 * reads. */
#include "hooks.h"
#include "where.h"

#define MAX_SUBNETS 32

const volatile __u32 subnet_count = 0;
const volatile __u16 subnet_family[MAX_SUBNETS] = {};
/* 4 words per subnet, in memory (network) order; IPv4 uses the first word only */
const volatile __u32 subnet_addr[MAX_SUBNETS * 4] = {};
const volatile __u32 subnet_mask[MAX_SUBNETS * 4] = {};

struct subnet_key {
	__u32 subnet; /* index into the tables above */
	__u32 netns;  /* the socket's network namespace (inode) */
};
EXPORT_STRUCT(subnet_key);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct subnet_key);
	__type(value, __u64);
} sent SEC(".maps");

static __always_inline bool subnet_matches(__u32 i, __u16 family, const __u32 *d)
{
	if (subnet_family[i] != family)
		return false;
#pragma unroll
	for (int w = 0; w < 4; w++)
		if ((d[w] & subnet_mask[i * 4 + w]) != subnet_addr[i * 4 + w])
			return false;
	return true;
}

static __always_inline int on_send(const struct sock *sk, long bytes, bool btf_sk)
{
	struct subnet_key key = {};
	__u32 d[4] = {};
	__u16 family;
	__u64 *total;

	if (bytes <= 0 || !sk || !sock_is_tcp(sk))
		return 0;
	key.netns = sock_netns(sk);
	if (!netns_allowed(key.netns))
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET6)
		BPF_CORE_READ_INTO(&d, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
	else if (family == AF_INET)
		BPF_CORE_READ_INTO(&d[0], sk, __sk_common.skc_daddr);
	else
		return 0;
	for (__u32 i = 0; i < MAX_SUBNETS && i < subnet_count; i++) {
		if (!subnet_matches(i, family, d))
			continue;
		key.subnet = i;
		total = bpf_map_lookup_elem(&sent, &key);
		if (total) {
			*total += bytes;
		} else if (bpf_map_update_elem(&sent, &key, &(__u64){ bytes }, BPF_NOEXIST)) {
			total = bpf_map_lookup_elem(&sent, &key); /* made by another CPU meanwhile? */
			if (total)
				*total += bytes;
			else
				count_lost();
		}
		break;
	}
	return 0;
}

SOCK_SEND_HOOKS(on_send)
