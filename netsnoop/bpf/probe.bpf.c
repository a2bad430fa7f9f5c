// SPDX-License-Identifier: GPL-2.0
/* probe: empty programs of each hook kind, loaded one at a time by `netsnoop check`
 * to find out what this kernel really allows (loading and attaching, not guessing). */
#include "netsnoop.h"

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(probe__tp_btf) { return 0; }

SEC("tracepoint/sock/inet_sock_set_state")
int probe__tracepoint(void *ctx) { return 0; }

SEC("fentry/tcp_set_state")
int BPF_PROG(probe__fentry) { return 0; }

SEC("kprobe/tcp_set_state")
int BPF_KPROBE(probe__kprobe) { return 0; }
