// SPDX-License-Identifier: GPL-2.0
/* top: TCP bytes sent and received per process and connection, summed in the kernel
 * (tcptop). User space takes the conns map's entries (lookup-and-delete) every
 * interval; no per-send event crosses to user space.
 *
 * Every send and receive call of every process runs this program, so its cost is the
 * workload's slowdown. Where the hook hands over a typed socket (tp_btf), the bytes
 * go into the socket's own storage: one pointer chase, no hashing, no reading of the
 * socket. They move to conns (the costlier part: the socket's addresses, a hash
 * insert) only when that storage changes hands:
 *   - every interval, user space runs send__tp_btf__flush over all sockets' storage;
 *   - when the socket is destroyed (send__tp_btf__closing), before its storage goes;
 *   - when another process starts using the socket (the owner's part is kept apart).
 * The other variants (classic tracepoint, kprobe) pass an untyped pointer, which
 * socket storage refuses: they add to conns directly, on every call. */
#include "traffic.h"

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

enum sock_bytes_state { SB_UNSEEN, SB_COUNTED, SB_EXCLUDED };

/* Bytes not yet moved to conns, and whose they are. */
struct sock_bytes {
	__u64 rx;
	__u64 tx;
	__u32 pid;
	__u32 state; /* enum sock_bytes_state */
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_bytes);
} sock_bytes SEC(".maps");

/* Whether a socket's bytes are counted at all: TCP, and through the filters. */
static __always_inline bool counted(const struct sock *sk, struct sock_tuple *t)
{
	if (!sock_is_tcp(sk))
		return false;
	read_sock_tuple(sk, t);
	return tuple_allowed(t);
}

/* The conns entry of (sk, pid), made if missing; NULL if the map is full. */
static __always_inline struct conn_bytes *conn_entry(const struct sock *sk, __u32 pid, const char *comm)
{
	struct conn_key key = {
		.sk = (__u64)sk,
		.pid = pid,
		.sport = BPF_CORE_READ((struct inet_sock *)sk, inet_sport),
		.dport = BPF_CORE_READ(sk, __sk_common.skc_dport),
	};
	struct conn_bytes fresh = {}, *v;
	struct sock_tuple t;

	v = bpf_map_lookup_elem(&conns, &key);
	if (v)
		return v;
	fresh.excluded = !counted(sk, &t);
	if (!fresh.excluded) {
		fresh.family = t.family;
		fresh.lport = t.sport;
		fresh.rport = t.dport;
		__builtin_memcpy(fresh.laddr, t.saddr, 16);
		__builtin_memcpy(fresh.raddr, t.daddr, 16);
	}
	if (comm)
		__builtin_memcpy(fresh.comm, comm, TASK_COMM_LEN);
	else
		bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	/* BPF_NOEXIST: if another CPU created it meanwhile, keep and use theirs */
	bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&conns, &key);
}

/* ---- untyped socket: straight into conns ----------------------------------------- */

static __always_inline void count_in_map(const struct sock *sk, __u32 pid, long bytes, bool send)
{
	struct conn_bytes *v = conn_entry(sk, pid, NULL);

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

/* ---- typed socket: into its storage, moved to conns when it changes hands ------- */

/* Move the storage's bytes to its owner's conns entry. Swapped out atomically, so a
 * byte added meanwhile on another CPU is moved now or next time, never twice. A full
 * map leaves them in the storage for the next try, unless the socket is going
 * (final): then they are lost, and counted so. */
static __always_inline void flush(const struct sock *sk, struct sock_bytes *sb, bool final)
{
	struct conn_bytes *v;
	__u64 rx, tx;

	if (sb->state != SB_COUNTED || (!sb->rx && !sb->tx))
		return;
	v = conn_entry(sk, sb->pid, sb->comm);
	if (!v) {
		if (final)
			count_lost();
		return;
	}
	rx = __sync_lock_test_and_set(&sb->rx, 0);
	tx = __sync_lock_test_and_set(&sb->tx, 0);
	__sync_fetch_and_add(&v->rx, rx);
	__sync_fetch_and_add(&v->tx, tx);
}

/* A process other than the storage's owner (or the first one) uses the socket. Two
 * processes calling at the same moment on two CPUs can see a few of one's bytes go
 * to the other; one after the other (fork, fd passing, a worker pool), each gets its
 * own. */
static __always_inline void change_owner(struct sock *sk, struct sock_bytes *sb, __u32 pid)
{
	struct sock_tuple t;

	if (sb->state == SB_UNSEEN)
		sb->state = counted(sk, &t) ? SB_COUNTED : SB_EXCLUDED;
	else
		flush(sk, sb, true); /* a full map: counted lost, as the direct path does */
	bpf_get_current_comm(sb->comm, sizeof(sb->comm));
	sb->pid = pid;
}

static __always_inline void count_in_storage(struct sock *sk, __u32 pid, long bytes, bool send)
{
	struct sock_bytes *sb = bpf_sk_storage_get(&sock_bytes, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!sb) {
		count_lost(); /* no memory for it, or the socket is already being freed */
		return;
	}
	if (sb->pid != pid || sb->state == SB_UNSEEN)
		change_owner(sk, sb, pid);
	if (sb->state != SB_COUNTED)
		return;
	if (send)
		__sync_fetch_and_add(&sb->tx, bytes);
	else
		__sync_fetch_and_add(&sb->rx, bytes);
}

static __always_inline int on_bytes(struct sock *sk, long bytes, bool send, bool btf_sk)
{
	__u32 pid;

	if (bytes <= 0 || !sk)
		return 0;
	pid = current_pid();
	if (!pid_allowed(pid) || !cgroup_allowed())
		return 0;
	if (btf_sk)
		count_in_storage(sk, pid, bytes, send);
	else
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

/* Run by user space at the end of every interval: every socket's storage to conns. */
SEC("iter/bpf_sk_storage_map")
int send__tp_btf__flush(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock_bytes *sb = ctx->value;
	struct sock *sk = ctx->sk;

	if (sk && sb)
		flush(sk, sb, false);
	return 0;
}

/* The socket is being destroyed: no process can send or receive on it any more, and
 * its storage goes with it. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(send__tp_btf__closing, struct sock *sk)
{
	struct sock_bytes *sb = bpf_sk_storage_get(&sock_bytes, sk, 0, 0);

	if (sb)
		flush(sk, sb, true);
	return 0;
}
