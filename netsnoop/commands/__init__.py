"""The subcommands: name -> (module, one-line help).

Listing them here lets ``netsnoop --help`` show every tool without importing any;
a module is imported only when its subcommand runs. Each module exposes ``command``.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("netsnoop.commands.check", "Show what this kernel offers and which subcommands can run here."),
    "states": ("netsnoop.commands.states", "Trace TCP state changes, with time spent in each state (tcpstates)."),
    "life": ("netsnoop.commands.life", "Trace TCP sessions as they close: owner, bytes, duration (tcplife)."),
}
