"""Build hook: compile the BPF objects with clang, and bundle libbpf, before packaging.

The objects are built against the build machine's kernel BTF (vmlinux.h via bpftool)
and relocated by libbpf (CO-RE) on whatever kernel runs them, so an installed
netsnoop needs neither clang nor kernel headers. The wheel also carries a libbpf
(netsnoop/bpf/libbpf.so.1, preferred by netsnoop.libbpf over the system's), so it
needs no particular system libbpf either: only libelf, zlib and glibc from the host.
That makes it a platform wheel, tagged for this machine's architecture but not
manylinux (libelf is outside the manylinux policy), and for any Python 3: no
Python extension is inside.
"""

import glob
import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]


class BuildWithBPF(build_py):
    def run(self) -> None:
        subprocess.check_call(["make", "bpf", "bundle"])
        super().run()


class PlatformWheel(bdist_wheel):
    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        return "py3", "none", super().get_tag()[2]


def man_pages() -> list[str]:
    """netsnoop(8) and one page per subcommand, generated from the click definitions
    (netsnoop.manpages) so that they cannot drift from --help."""
    subprocess.check_call([sys.executable, "-m", "netsnoop.manpages", "build/man"],
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    return sorted(glob.glob("build/man/*.8"))


setup(cmdclass={"build_py": BuildWithBPF, "bdist_wheel": PlatformWheel},
      data_files=[("share/man/man8", man_pages())])
