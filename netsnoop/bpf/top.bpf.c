// SPDX-License-Identifier: GPL-2.0
/* top: TCP bytes sent and received per process and connection, summed in the kernel
 * (tcptop). User space takes the conns map's entries (lookup-and-delete) every
 * interval; no per-send event crosses to user space.
 *
 * Every send and receive call of every process runs this program, so its cost is the
 * workload's slowdown. Where the hook hands over a typed socket (tp_btf), the bytes
 * go into a small per-CPU cache of the sockets the running task last used: no helper
 * call, no hashing (the kernel inlines a per-CPU array lookup), a few compares and
 * an add. A context switch on that CPU (counted by send__tp_btf__switch) makes the
 * next call confirm whose the cache is; bytes move to conns (the costlier part: a
 * hash insert) only when the cache changes hands:
 *   - every interval, user space runs send__tp_btf__drain on every CPU;
 *   - when a socket is destroyed (send__tp_btf__closing), so that a later socket at
 *     the same address never adds to its entry;
 *   - when another process runs on that CPU and uses a socket, or a fifth socket
 *     needs a place.
 * The socket's namespace, the process's cgroup and the filters on them are read when
 * a socket takes a place in the cache, not per call: the hot path stays a compare and
 * an add.
 * The other variants (classic tracepoint, kprobe) pass an untyped pointer: they add
 * to conns directly, on every call. */
#include "hooks.h"
#include "where.h"

/* One conns entry per socket and process. Besides the socket's address, the key holds
 * its two ports (network order; inet_sport, since skc_num is cleared when a socket
 * still being read goes to CLOSE), against reuse of that address by a later socket
 * within the interval. */
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
	struct sock_tuple t; /* decoded flat: saddr/sport local, daddr/dport remote */
	__u8 excluded; /* not TCP, or filtered out: counted nowhere, remembered so */
	__u8 pad;
	char comm[TASK_COMM_LEN];
	__u64 cgroup; /* the process's cgroup v2 id */
	__u32 netns;  /* the socket's network namespace (inode) */
	__u32 pad2;
};
EXPORT_STRUCT(conn_bytes);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct conn_key);
	__type(value, struct conn_bytes);
} conns SEC(".maps");

/* Whether a socket's bytes are counted at all: TCP, and through the filters. */
static __always_inline bool counted(const struct sock *sk, struct sock_tuple *t, __u32 netns)
{
	if (!sock_is_tcp(sk) || !netns_allowed(netns))
		return false;
	read_sock_tuple(sk, t);
	return tuple_allowed(t);
}

static __always_inline void sock_key(const struct sock *sk, __u32 pid, struct conn_key *key)
{
	key->sk = (__u64)sk;
	key->pid = pid;
	key->sport = BPF_CORE_READ((struct inet_sock *)sk, inet_sport);
	key->dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
}

/* What conns shows for a socket: its endpoints, or that it is not counted. */
static __always_inline void describe(const struct sock *sk, struct conn_bytes *entry)
{
	struct sock_tuple t;

	entry->netns = sock_netns(sk);
	entry->excluded = !counted(sk, &t, entry->netns);
	if (entry->excluded)
		return;
	entry->t = t;
}

/* The conns entry of key, made from fresh if missing; NULL if the map is full. */
static __always_inline struct conn_bytes *conn_entry(const struct conn_key *key, const struct conn_bytes *fresh)
{
	/* BPF_NOEXIST: if another CPU created it meanwhile, keep and use theirs */
	bpf_map_update_elem(&conns, key, fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&conns, key);
}

/* ---- untyped socket: straight into conns ----------------------------------------- */

static __always_inline void count_in_map(const struct sock *sk, __u32 pid, long bytes, bool send)
{
	struct conn_bytes fresh = {}, *v;
	struct conn_key key;

	sock_key(sk, pid, &key);
	v = bpf_map_lookup_elem(&conns, &key);
	if (!v) {
		describe(sk, &fresh);
		bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
		fresh.cgroup = bpf_get_current_cgroup_id();
		v = conn_entry(&key, &fresh);
	}
	if (!v) {
		count_lost(); /* the map is full */
		return;
	}
	if (v->excluded)
		return;
	if (send)
		__sync_fetch_and_add(&v->tx, bytes);
	else
		__sync_fetch_and_add(&v->rx, bytes);
}

/* ---- typed socket: a per-CPU cache, moved to conns when it changes hands -------- */

#define CACHED_SOCKETS 4 /* a power of two */

struct cached_socket {
	__u64 sk;                /* 0: a free place */
	__u32 portpair;          /* the socket's skc_portpair when cached (see count_cached) */
	__u32 pad;
	__u64 rx;
	__u64 tx;
	struct conn_key key;
	struct conn_bytes entry; /* what conns gets under key if it has no entry yet */
};

/* The sockets that the task running on this CPU used last, with their bytes not yet
 * in conns: all of them the owner's, the process that task belongs to. */
struct cpu_cache {
	__u64 switches; /* context switches on this CPU, counted by send__tp_btf__switch */
	__u64 checked;  /* switches when the running task was last confirmed as the owner */
	__u64 cgroup;   /* the owner's cgroup v2 id */
	__u32 pid;      /* the owner */
	__u32 busy;     /* being rewritten or flushed: the drain and the destroy hook keep off */
	__u32 next;     /* the place to take when all are in use */
	char comm[TASK_COMM_LEN];
	struct cached_socket socks[CACHED_SOCKETS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_cache);
} cpu_cache SEC(".maps");

/* Move a cached socket's bytes to conns. Swapped out atomically: the drain runs in an
 * interrupt, so a byte added meanwhile is moved now or next time, never twice. A full
 * map leaves them cached for the next try, unless the place is being given up
 * (final): then they are lost, and counted so. */
static __noinline void flush_cached(struct cached_socket *cs, bool final)
{
	struct conn_bytes *v;
	__u64 rx, tx;

	if (!cs->sk || cs->entry.excluded || (!cs->rx && !cs->tx))
		return;
	v = bpf_map_lookup_elem(&conns, &cs->key);
	if (!v)
		v = conn_entry(&cs->key, &cs->entry);
	if (!v) {
		if (final)
			count_lost();
		return;
	}
	rx = __sync_lock_test_and_set(&cs->rx, 0);
	tx = __sync_lock_test_and_set(&cs->tx, 0);
	__sync_fetch_and_add(&v->rx, rx);
	__sync_fetch_and_add(&v->tx, tx);
}

static __always_inline void add_bytes(struct cached_socket *cs, long bytes, bool send)
{
	if (cs->entry.excluded)
		return;
	if (send)
		__sync_fetch_and_add(&cs->tx, bytes);
	else
		__sync_fetch_and_add(&cs->rx, bytes);
}

static __always_inline struct cached_socket *cached(struct cpu_cache *c, const struct sock *sk, __u32 portpair)
{
#pragma unroll
	for (int i = 0; i < CACHED_SOCKETS; i++) {
		if (c->socks[i].sk == (__u64)sk && c->socks[i].portpair == portpair)
			return &c->socks[i];
	}
	return NULL;
}

/* Not in the cache, or the task may have changed since it was last confirmed. */
static __noinline void cache_miss(struct cpu_cache *c, struct sock *sk, __u32 portpair, long bytes, bool send)
{
	struct cached_socket *cs;
	__u32 pid = current_pid();

	if (!pid_allowed(pid) || !cgroup_allowed())
		return; /* not counted, and the cache stays its owner's */
	c->busy = 1;
	barrier(); /* busy is set before the cache changes and cleared after */
	if (c->checked != c->switches || !c->pid) { /* pid 0: no owner yet (a new cache) */
		if (c->pid != pid) { /* another process: the last one's bytes go to conns */
#pragma unroll
			for (int i = 0; i < CACHED_SOCKETS; i++) {
				flush_cached(&c->socks[i], true);
				c->socks[i].sk = 0;
			}
			c->pid = pid;
			c->cgroup = bpf_get_current_cgroup_id();
			bpf_get_current_comm(c->comm, sizeof(c->comm));
		}
		c->checked = c->switches;
		cs = cached(c, sk, portpair);
		if (cs)
			goto add;
	}
	cs = &c->socks[c->next++ & (CACHED_SOCKETS - 1)];
	flush_cached(cs, true);
	cs->sk = (__u64)sk;
	cs->portpair = portpair;
	cs->rx = cs->tx = 0;
	sock_key(sk, pid, &cs->key);
	describe(sk, &cs->entry);
	__builtin_memcpy(cs->entry.comm, c->comm, TASK_COMM_LEN);
	cs->entry.cgroup = c->cgroup;
add:
	add_bytes(cs, bytes, send);
	barrier();
	c->busy = 0;
}

/* The hot path: the same task on a socket it used lately (no helper call: the kernel
 * inlines this lookup). The socket's ports are compared too: a socket destroyed on
 * another CPU, and a new one at its address, would otherwise add to the old entry. */
static __always_inline void count_cached(struct sock *sk, long bytes, bool send)
{
	struct cached_socket *cs;
	struct cpu_cache *c;
	__u32 zero = 0, portpair;

	if (BPF_CORE_READ_BITFIELD(sk, sk_protocol) != IPPROTO_TCP)
		return; /* every socket family passes here: they would crowd the cache */
	c = bpf_map_lookup_elem(&cpu_cache, &zero);
	if (!c)
		return;
	portpair = sk->__sk_common.skc_portpair;
	if (c->checked == c->switches) {
		cs = cached(c, sk, portpair);
		if (cs) {
			add_bytes(cs, bytes, send);
			return;
		}
	}
	cache_miss(c, sk, portpair, bytes, send);
}

static __always_inline int on_bytes(struct sock *sk, long bytes, bool send, bool btf_sk)
{
	__u32 pid;

	if (bytes <= 0 || !sk)
		return 0;
	if (btf_sk) {
		count_cached(sk, bytes, send);
		return 0;
	}
	pid = current_pid();
	if (pid_allowed(pid) && cgroup_allowed())
		count_in_map(sk, pid, bytes, send);
	return 0;
}

static __always_inline int on_send(struct sock *sk, long bytes, bool btf_sk)
{
	return on_bytes(sk, bytes, true, btf_sk);
}

static __always_inline int on_recv(struct sock *sk, long bytes, bool btf_sk)
{
	return on_bytes(sk, bytes, false, btf_sk);
}

SOCK_SEND_HOOKS(on_send)
SOCK_RECV_HOOKS(on_recv)

/* Companions of the send__tp_btf variant, loaded only with it (see loader.py); the
 * command links the send and recv groups, so recv__tp_btf never runs without them. */

/* Every context switch: the next call on this CPU confirms whose the cache is. */
SEC("tp_btf/sched_switch")
int BPF_PROG(send__tp_btf__switch)
{
	__u32 zero = 0;
	struct cpu_cache *c = bpf_map_lookup_elem(&cpu_cache, &zero);

	if (c)
		c->switches++;
	return 0;
}

/* Run by user space on every CPU at the end of every interval (BPF_PROG_TEST_RUN, in
 * an interrupt on that CPU): the cache's bytes to conns. Returns 1 when the cache was
 * being rewritten (user space tries again). */
SEC("raw_tp")
int send__tp_btf__drain(void *ctx)
{
	__u32 zero = 0;
	struct cpu_cache *c = bpf_map_lookup_elem(&cpu_cache, &zero);

	if (!c)
		return 0;
	if (c->busy)
		return 1;
#pragma unroll
	for (int i = 0; i < CACHED_SOCKETS; i++)
		flush_cached(&c->socks[i], false);
	return 0;
}

/* A socket is being destroyed: its place in this CPU's cache is given up, before a
 * new socket at its address could take it over. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(send__tp_btf__closing, struct sock *sk)
{
	__u32 zero = 0;
	struct cpu_cache *c = bpf_map_lookup_elem(&cpu_cache, &zero);

	if (!c || c->busy)
		return 0;
#pragma unroll
	for (int i = 0; i < CACHED_SOCKETS; i++) {
		if (c->socks[i].sk == (__u64)sk) {
			flush_cached(&c->socks[i], true);
			c->socks[i].sk = 0;
		}
	}
	return 0;
}
