"""ctypes declarations for the system libbpf (``libbpf.so.1``, version 1.0 or newer).

Only the handful of entry points netsnoop needs are declared, each once, with full
argument and return types so that a wrong call fails in Python rather than in C.
Higher layers (:mod:`netsnoop.loader`, :mod:`netsnoop.btf`) never touch ctypes
signatures themselves.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_void_p,
)
from typing import TYPE_CHECKING, Any, Callable

from netsnoop.errors import MissingFeature
from netsnoop.log import say, verbose

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")
# The copy a wheel carries (built by `make bundle`): preferred, so that an installed
# netsnoop does not depend on the host's libbpf being there or being recent.
BUNDLED_LIBBPF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "libbpf.so.1")


class OpenOpts(Structure):
    """``struct bpf_object_open_opts`` as of libbpf 1.0 (size-versioned by ``sz``)."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", c_bool),
        ("pin_root_path", c_char_p),
        ("_pad", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_char_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_uint32),
    ]


class IterLinkInfo(Structure):
    """``union bpf_iter_link_info``: the map an iterator walks (the union's largest
    member is 4 words; the rest stays zero)."""

    _fields_ = [("map_fd", c_uint32), ("_rest", c_uint32 * 4)]


class IterAttachOpts(Structure):
    """``struct bpf_iter_attach_opts`` (size-versioned by ``sz``)."""

    _fields_ = [("sz", c_size_t), ("link_info", POINTER(IterLinkInfo)), ("link_info_len", c_uint32)]


class TestRunOpts(Structure):
    """``struct bpf_test_run_opts`` (size-versioned by ``sz``): only what running a
    ``raw_tp`` program on a chosen CPU needs is ever set."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


BPF_F_TEST_RUN_ON_CPU = 1

# int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *fmt, va_list args)
PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
# void (*perf_buffer_sample_fn)(void *ctx, int cpu, void *data, __u32 size)
PERF_SAMPLE_FN = CFUNCTYPE(None, c_void_p, c_int, c_void_p, c_uint32)
# void (*perf_buffer_lost_fn)(void *ctx, int cpu, __u64 cnt)
LOST_FN = CFUNCTYPE(None, c_void_p, c_int, ctypes.c_uint64)

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_major_version": (c_uint32, []),
    "libbpf_minor_version": (c_uint32, []),
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_object__open_file": (c_void_p, [c_char_p, POINTER(OpenOpts)]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__attach_iter": (c_void_p, [c_void_p, POINTER(IterAttachOpts)]),
    "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_link__fd": (c_int, [c_void_p]),
    "bpf_iter_create": (c_int, [c_int]),
    "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(TestRunOpts)]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__set_type": (c_int, [c_void_p, c_int]),
    "bpf_map__set_key_size": (c_int, [c_void_p, c_uint32]),
    "bpf_map__set_value_size": (c_int, [c_void_p, c_uint32]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_lookup_and_delete_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_create": (c_int, [c_int, c_char_p, c_uint32, c_uint32, c_uint32, c_void_p]),
    "ring_buffer__new": (c_void_p, [c_int, SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "perf_buffer__new": (c_void_p, [c_int, c_size_t, PERF_SAMPLE_FN, LOST_FN, c_void_p, c_void_p]),
    "perf_buffer__poll": (c_int, [c_void_p, c_int]),
    "perf_buffer__consume": (c_int, [c_void_p]),
    "perf_buffer__free": (None, [c_void_p]),
    "btf__load_vmlinux_btf": (c_void_p, []),
    "btf__parse": (c_void_p, [c_char_p, c_void_p]),
    "btf__new": (c_void_p, [c_char_p, c_uint32]),
    "btf__free": (None, [c_void_p]),
    "btf__type_cnt": (c_uint32, [c_void_p]),
    "btf__find_by_name_kind": (ctypes.c_int32, [c_void_p, c_char_p, c_uint32]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
}


class _Lib:
    """The loaded library; attribute access returns typed C functions."""

    def __init__(self) -> None:
        self._cdll = self._open()
        self.path: str = self._cdll._name
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self._cdll, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        major = self.libbpf_major_version()
        if major < 1:
            raise MissingFeature(
                f"libbpf {major}.{self.libbpf_minor_version()} is too old: netsnoop needs libbpf >= 1.0"
            )
        self.version = f"{major}.{self.libbpf_minor_version()}"

    if TYPE_CHECKING:
        # The C functions are set as attributes from _SIGNATURES, which ctypes checks at
        # each call; this tells the type checker so instead of restating every signature.
        def __getattr__(self, name: str) -> Callable[..., Any]: ...

    @staticmethod
    def _open() -> ctypes.CDLL:
        override = os.environ.get("NETSNOOP_LIBBPF")
        candidates = (override,) if override else (BUNDLED_LIBBPF, *LIBBPF_NAMES)
        for name in candidates:
            if name == BUNDLED_LIBBPF and not os.path.exists(name):
                continue
            try:
                return ctypes.CDLL(name, use_errno=True)
            except OSError:
                continue
        raise MissingFeature(
            "libbpf.so.1 not found (neither netsnoop's own nor the system's): install libbpf >= 1.0 "
            "(Debian/Ubuntu: apt-get install libbpf1), or netsnoop from its wheel, which carries one"
        )


_lib: _Lib | None = None


def lib() -> _Lib:
    """Load libbpf on first use, so that `netsnoop --help` never pays for it."""
    global _lib
    if _lib is None:
        _lib = _Lib()
        _install_logger(_lib)
    return _lib


def errno_message(err: int) -> str:
    err = abs(err)
    return f"{os.strerror(err)} (errno {err})"


def last_errno() -> int:
    return ctypes.get_errno()


# libbpf formats with a va_list we cannot expand portably from Python, so we hand the
# format and args to the C library's vsnprintf: the interpreter's own C library, found
# without ctypes.util (whose import and ldconfig run cost start-up ~6 ms).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int

_captured: list[str] | None = None


@PRINT_FN
def _print(level: int, fmt: bytes, args: int) -> int:
    if level >= 2 and not verbose():
        return 0  # libbpf's debug lines (~950 per load) only ever go to --verbose
    buf = ctypes.create_string_buffer(2048)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    if _captured is not None:
        _captured.append(text)
    if text:
        say("netsnoop.libbpf", text)
    return 0


def _install_logger(library: _Lib) -> None:
    library.libbpf_set_print(_print)


class capture_log:
    """Collect libbpf's messages while a block runs, to quote them in an error."""

    def __enter__(self) -> list[str]:
        global _captured
        self._outer = _captured
        _captured = []
        return _captured

    def __exit__(self, *exc: object) -> None:
        global _captured
        _captured = self._outer


__all__ = ["lib", "OpenOpts", "IterAttachOpts", "IterLinkInfo", "TestRunOpts", "BPF_F_TEST_RUN_ON_CPU", "SAMPLE_FN",
           "capture_log", "errno_message", "last_errno"]
