# netsnoop: build, run, test and benchmark on a Debian/Ubuntu machine as root.
# Every target installs what it is missing (apt packages, a venv) before it runs.

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
BPF_DIR     := netsnoop/bpf
BPF_SRCS    := $(wildcard $(BPF_DIR)/*.bpf.c)
BPF_OBJS    := $(BPF_SRCS:.bpf.c=.bpf.o)
BPF_HDRS    := $(wildcard $(BPF_DIR)/*.h)
VMLINUX_H   := $(BPF_DIR)/vmlinux.h
CLANG       ?= clang
LLVM_STRIP  ?= llvm-strip
BPFTOOL     ?= bpftool
ARCH        := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/' -e 's/ppc64le/powerpc/' -e 's/s390x/s390/')
APT_PKGS    := clang llvm libbpf-dev libbpf1 bpftool nftables iproute2 util-linux procps python3-venv prometheus
ARGS        ?=

.PHONY: all bpf bundle deps apt venv run lint test test-unit bench dist check-env clean

all: bpf bundle

## BPF objects (built against the running kernel's BTF; CO-RE makes them portable)
bpf: $(BPF_OBJS)

$(VMLINUX_H):
	@command -v $(BPFTOOL) >/dev/null || $(MAKE) apt
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BPF_DIR)/%.bpf.o: $(BPF_DIR)/%.bpf.c $(BPF_HDRS) $(VMLINUX_H)
	@command -v $(CLANG) >/dev/null || $(MAKE) apt
	$(CLANG) -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) -I$(BPF_DIR) -c $< -o $@
	$(LLVM_STRIP) -g $@

## the libbpf a wheel carries, so that an installed netsnoop needs no system libbpf
## (only libelf, zlib and glibc >= 2.28 from the host); the ctypes layer prefers it
BUNDLED_LIBBPF := $(BPF_DIR)/libbpf.so.1
bundle: $(BUNDLED_LIBBPF)

$(BUNDLED_LIBBPF):
	@cc=$$(command -v gcc || command -v $(CLANG)) || { $(MAKE) apt && cc=$(CLANG); }; \
	src=$$($$cc -print-file-name=libbpf.so.1); \
	if [ "$$src" = libbpf.so.1 ]; then $(MAKE) apt; src=$$($$cc -print-file-name=libbpf.so.1); fi; \
	echo "cp -L $$src $@"; cp -L "$$src" $@.tmp && mv $@.tmp $@

## system packages, only when something is missing
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## a venv with netsnoop (editable) and the test tools. The editable install is a plain
## path entry (setuptools' compat mode), not the default import-hook finder, which every
## Python start in the venv would import (~11 ms, ~2 MiB): with it, start-up and memory
## are what a wheel's install gives (bench/run.py measures them here).
$(VENV)/.installed: pyproject.toml setup.py Makefile
	@$(MAKE) apt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat \
		|| $(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

deps: apt venv bpf bundle

## the main job: what this kernel offers, then a live trace (Ctrl-C ends it)
run: deps
	$(VENV)/bin/netsnoop check
	$(VENV)/bin/netsnoop $(if $(ARGS),$(ARGS),states)

## the lint and type gate (configured in pyproject.toml), run first by make test
lint: venv
	$(VENV)/bin/ruff check netsnoop tests bench
	$(VENV)/bin/mypy

## the test suite (integration tests need root and kernel BTF; CI=true makes skips fail)
test: deps lint
	$(VPY) -m pytest -q -rs tests

test-unit: deps
	$(VPY) -m pytest -q -m "not integration" tests

## benchmarks: start-up, memory, throughput, overhead (not part of make test)
## ARGS="--full" for more repeats, ARGS="--only states,life" for a subset
bench: deps bench/loadgen
	$(VPY) -m compileall -q netsnoop  # start-up is measured with bytecode written, as an installed netsnoop has it
	$(VPY) bench/run.py $(ARGS)

bench/loadgen: bench/loadgen.c
	@cc=$$(command -v gcc || command -v $(CLANG)) || { $(MAKE) apt && cc=$(CLANG); }; \
	echo "$$cc -O2 -Wall -Wextra -pthread -o $@ $<"; $$cc -O2 -Wall -Wextra -pthread -o $@ $<

## an sdist and a platform wheel (BPF objects and libbpf inside) in dist/
dist: deps
	$(VPY) -m pip install -q build
	$(VPY) -m build --outdir dist .

clean:
	rm -rf $(BPF_DIR)/*.bpf.o $(VMLINUX_H) $(BUNDLED_LIBBPF) build dist *.egg-info netsnoop.egg-info .mypy_cache .ruff_cache
