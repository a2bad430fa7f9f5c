"""Build hook: compile the BPF objects with clang before packaging them.

The objects are built against the build machine's kernel BTF (vmlinux.h via bpftool)
and relocated by libbpf (CO-RE) on whatever kernel runs them, so an installed
netsnoop needs neither clang nor kernel headers.
"""

import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithBPF(build_py):
    def run(self) -> None:
        subprocess.check_call(["make", "bpf"])
        super().run()


setup(cmdclass={"build_py": BuildWithBPF})
