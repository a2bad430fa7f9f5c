"""The errors netsnoop reports to users as one line and a non-zero exit.

Anything raised as a :class:`NetsnoopError` is printed as ``netsnoop: <message>``
without a traceback (unless ``--verbose``); everything else is a bug.
"""

from __future__ import annotations


class NetsnoopError(Exception):
    """A problem the user can act on; ``exit_code`` is the process exit status."""

    exit_code = 1


class MissingPrivilege(NetsnoopError):
    """The process lacks the capabilities needed to load BPF programs."""


class MissingFeature(NetsnoopError):
    """The kernel or system lacks something netsnoop needs (BTF, a tracepoint, libbpf)."""


class LoadError(NetsnoopError):
    """libbpf or the verifier refused a program."""


class BadSetting(NetsnoopError):
    """An environment variable netsnoop reads has a value it cannot use: a usage error."""

    exit_code = 2
