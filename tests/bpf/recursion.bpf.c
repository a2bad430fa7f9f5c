// SPDX-License-Identifier: GPL-2.0
/* A test object whose hook the kernel is sure to skip, a known number of times.
 *
 * "again" hooks the bpf_trace_printk tracepoint and itself calls bpf_printk, which
 * fires that tracepoint again while "again" still runs on this CPU: the kernel does
 * not run it a second time and counts one recursion miss instead. "start" calls
 * bpf_printk once per getppid() of the test's own process, so the test knows how
 * many misses there must be without asking the code under test. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

const volatile __u32 target_tgid = 0;
const volatile long getppid_nr = 110; /* x86-64 */

SEC("tp_btf/sys_enter")
int BPF_PROG(start, struct pt_regs *regs, long id)
{
	if (id == getppid_nr && bpf_get_current_pid_tgid() >> 32 == target_tgid)
		bpf_printk("netsnoop test: start");
	return 0;
}

SEC("tp_btf/bpf_trace_printk")
int BPF_PROG(again, const char *text)
{
	bpf_printk("netsnoop test: again");
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
