"""netsnoop: the bcc TCP/socket tracing tools as one libbpf/CO-RE command."""

__version__ = "0.1.0"
