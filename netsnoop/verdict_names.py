"""The verdicts ``netsnoop why`` can give, apart from the rules that reach them
(:mod:`netsnoop.verdicts`): ``why --help`` lists them without importing those rules,
which then load after the BPF object, outside libbpf's peak of memory.
"""

# One line each, in the order --help lists them.
VERDICTS: dict[str, str] = {
    "OK": "the handshake completed (and the server accepted it); shows the connect latency",
    "FIREWALL_DROP": "an nftables/iptables rule dropped the SYN (or the SYN-ACK); tcpdump still sees such SYNs",
    "FIREWALL_REJECT": "a firewall rule rejected the SYN, answering with an ICMP error or a reset",
    "RP_FILTER": "reverse-path filtering dropped the SYN: the route back to the client leaves by another device",
    "NO_LISTENER": "nothing listens on the port in the namespace the SYN reached: it was answered with a reset",
    "LISTENER_ON_OTHER_ADDRESS": "a server listens on the port, but bound to another address than the one called",
    "LISTENER_IN_OTHER_NAMESPACE": "a server listens on the port, but in another network namespace",
    "ACCEPT_QUEUE_FULL": ("the listener's accept queue is full (the server does not accept() fast enough): "
                          "SYNs are ignored"),
    "SYN_QUEUE_FULL": "the listener's SYN queue is full: SYNs are dropped or answered with SYN cookies",
    "NO_ROUTE_BACK": "the SYN arrived but the SYN-ACK has no route back to the client",
    "SYNACK_UNANSWERED": "SYN-ACKs were sent and retransmitted, no ACK came back: the reply is lost on the way",
    "NOT_ACCEPTED": "the handshake completed but the server process never accept()ed the connection",
    "REFUSED": "the client's connect() was refused (a reset came back)",
    "TIMEOUT": "the client's SYNs got no answer at all",
    "UNREACHABLE": "an ICMP error said the destination cannot be reached",
    "DROPPED": "the kernel dropped the SYN for another reason, which it names",
    "NO_ANSWER": "the SYN arrived and nothing on this host answered it or said why",
    "PASSED_ON": "not a failure here: the namespace the SYN reached forwarded or NATed it elsewhere",
}
FAILED = frozenset(VERDICTS) - {"OK", "PASSED_ON"}
