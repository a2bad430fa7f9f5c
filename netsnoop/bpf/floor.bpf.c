// SPDX-License-Identifier: GPL-2.0
/*
 * The bench's floor: programs that do nothing, on the hooks the storm and bulk tools
 * use, named <group>__<kind> like theirs. What a workload loses with these attached
 * is the price of the hooks themselves (the tracepoint's call, the program's entry;
 * for a syscall exit tracepoint, every task's slow syscall path), so a tool's ratio
 * over the floor's is its own work. Loaded only by bench/floor.py.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(set_state__tp_btf)
{
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(send__tp_btf)
{
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(recv__tp_btf)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int accept4__tracepoint(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int accept__tracepoint(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int connect_exit__tracepoint(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
