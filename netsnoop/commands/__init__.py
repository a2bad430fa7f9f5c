"""The subcommands: name -> (module, one-line help), and the bcc tools' names for them.

Listing them here lets ``netsnoop --help`` show every tool without importing any;
a module is imported only when its subcommand runs. Each module exposes ``command``
and, when it loads BPF, ``TRACER`` (so ``netsnoop check`` can try it).
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("netsnoop.commands.check", "Show what this kernel offers and which subcommands can run here."),
    "overview": ("netsnoop.commands.overview", "One screen of what needs attention, in every network namespace."),
    "states": ("netsnoop.commands.states", "Trace TCP state changes, with time spent in each state (tcpstates)."),
    "life": ("netsnoop.commands.life", "Trace TCP sessions as they close: owner, bytes, duration (tcplife)."),
    "connect": ("netsnoop.commands.connect",
                "Trace active TCP connects, and how they end with --outcome (tcpconnect)."),
    "accept": ("netsnoop.commands.accept", "Trace TCP connections returned by accept() (tcpaccept)."),
    "tracer": ("netsnoop.commands.tracer",
               "Trace TCP connect, accept and close of established connections (tcptracer)."),
    "connlat": ("netsnoop.commands.connlat", "Trace TCP connect latency (tcpconnlat)."),
    "top": ("netsnoop.commands.top", "Summarise TCP send/receive throughput by connection (tcptop)."),
    "retrans": ("netsnoop.commands.retrans", "Trace TCP retransmits and tail loss probes (tcpretrans)."),
    "drop": ("netsnoop.commands.drop", "Trace TCP packets the kernel drops, with the reason and stack (tcpdrop)."),
    "subnet": ("netsnoop.commands.subnet", "Summarise TCP bytes sent by destination subnet (tcpsubnet)."),
    "fdsnoop": ("netsnoop.commands.fdsnoop", "Trace file descriptors passed over Unix sockets (sofdsnoop)."),
    "solisten": ("netsnoop.commands.solisten", "Trace listen() on stream sockets (solisten)."),
    "rtt": ("netsnoop.commands.rtt", "Histogram of TCP round-trip times (tcprtt)."),
    "synbl": ("netsnoop.commands.synbl", "Histogram of TCP SYN backlog length (tcpsynbl)."),
    "why": ("netsnoop.commands.why", "Say why TCP connections to a port fail, with the evidence (every namespace)."),
    "netqtop": ("netsnoop.commands.netqtop", "Per-queue packet counts and sizes of a network interface (netqtop)."),
    "softirqs": ("netsnoop.commands.softirqs", "Time spent in soft IRQs by type (softirqs)."),
    "export": ("netsnoop.commands.export",
               "Serve TCP health as Prometheus metrics (connects, drops, retransmits, ...)."),
    "completion": ("netsnoop.commands.completion", "Print the shell completion script for bash, zsh or fish."),
}

# bcc's tool names run the same subcommands (``netsnoop tcplife``), for users with bcc
# habits; --help lists each subcommand once, with its bcc name in the help line.
# solisten, netqtop and softirqs already have bcc's names.
ALIASES: dict[str, str] = {
    "tcpstates": "states",
    "tcplife": "life",
    "tcpconnect": "connect",
    "tcpaccept": "accept",
    "tcptracer": "tracer",
    "tcpconnlat": "connlat",
    "tcptop": "top",
    "tcpretrans": "retrans",
    "tcpdrop": "drop",
    "tcpsubnet": "subnet",
    "sofdsnoop": "fdsnoop",
    "tcprtt": "rtt",
    "tcpsynbl": "synbl",
}
