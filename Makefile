# vdiskfs — `make demo` runs the main job, `make test` the tests, `make bench` the benchmarks.
# Each target installs what it needs, only when it is missing: Debian packages with apt-get,
# then `npm ci`, then the TypeScript build.
SHELL := /bin/bash
.DEFAULT_GOAL := build

# libfuse2: fuse-native loads libfuse.so.2. fuse3: fusermount. qemu-utils: qemu-img/qemu-io (the
# oracle). qemu-system-common: qemu-storage-daemon (the peer). fio: benchmarks and verify tests.
# libvmdk-utils, libvhdi-utils: independent VMDK and VHD/VHDX readers. bzip2: the corpus. time: peak memory in make bench. e2fsprogs/util-linux/fdisk: mkfs.ext4, losetup, sfdisk.
# strace: the hostile-image test traces every open(2) of the daemon. procps (pgrep), passwd
# (useradd for the unprivileged-mount test), python3 (SEEK_DATA probes), systemd (systemd-analyze).
APT_PACKAGES := libfuse2 fuse3 qemu-utils qemu-system-common fio libvmdk-utils libvhdi-utils bzip2 time e2fsprogs util-linux fdisk kmod strace procps passwd python3 systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps system-deps build test test-unit lint demo bench clean

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@[ -e /dev/fuse ] || { $(SUDO) modprobe fuse 2>/dev/null || true; }

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

deps: system-deps node_modules/.package-lock.json

# dist is rebuilt from scratch: a file left from a moved module (syscalls.js beside syscalls/)
# would otherwise shadow the new one at require time.
dist/.built: node_modules/.package-lock.json tsconfig.json $(shell find src bench -name '*.ts' 2>/dev/null)
	rm -rf dist
	npx tsc -p tsconfig.json
	@chmod +x dist/src/cli/main.js
	@touch $@

build: deps dist/.built

test: build
	npx vitest run

# Types of src and tests, eslint (typescript-eslint, type-checked) and prettier --check.
lint: deps
	npm run lint

test-unit: build
	npx vitest run test/io test/merge test/image test/formats

demo: build
	bash examples/demo.sh

bench: build
	node dist/bench/run.js

clean:
	rm -rf dist
