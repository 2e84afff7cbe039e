# Two commands matter: `make run` starts a hub, `make test` proves it works.
# Both create the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= .freight-data
LISTEN ?= 127.0.0.1:8443

.PHONY: run bytecode cluster test test-quiet lint typecheck unit integration test-proxies test-browser bench bench-ab venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,s3]'
	touch $(STAMP)

# Bytecode for every module, written here once: where PYTHONDONTWRITEBYTECODE
# is set, each hub and CLI process would otherwise compile freight's modules
# again at every start (a pip install compiles them at install time).
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 freight tests bench >/dev/null

run: $(STAMP) bytecode
	$(BIN)/freight hub --data $(DATA) --listen $(LISTEN)

# Three hub nodes on this machine (ports 8443-8445) sharing the local
# PostgreSQL (database freight_cluster, created when missing) and one data
# folder: docs/cluster.md.
CLUSTER_NODES ?= 3
cluster: $(STAMP) bytecode
	$(BIN)/python bench/cluster.py --nodes $(CLUSTER_NODES) --data .freight-cluster

lint: $(STAMP)
	$(BIN)/ruff format --check freight tests bench
	$(BIN)/ruff check freight tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) bytecode
	$(BIN)/pytest -q tests/unit

integration: $(STAMP) bytecode test-proxies test-browser
	$(BIN)/pytest -q tests/integration

# A test file stays on one worker (its module-scoped hub is started once).
# Three workers on two cores: with two, the cores were idle 30 % of the run
# (tests waiting on timeouts, shaped links and other processes); three
# took the suite from 817 s to 680 s on the same machine.
TEST_WORKERS ?= 3
test: lint typecheck $(STAMP) bytecode test-proxies test-browser
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not quiet" --durations=20 tests

# Timing tests that an otherwise busy machine would fail (a userspace delay
# line waits for a CPU): run alone, on an idle machine.
test-quiet: $(STAMP) bytecode test-proxies
	$(BIN)/pytest -q -p no:cacheprovider -m quiet tests

# The TLS-inspecting proxy the firewall tests run for real: squid built with
# OpenSSL (Debian's squid-openssl). Installed only as root with apt-get and
# only when missing; never fails the build (the tests then say why they skip).
test-proxies:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& ! squid -v 2>/dev/null | grep -q -- --with-openssl; then \
		echo "installing squid-openssl for the proxy tests"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q squid-openssl >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
			&& apt-get install -y -q squid-openssl >/dev/null 2>&1; } \
		|| echo "could not install squid-openssl: its proxy tests will be skipped"; \
	fi
	@# nft: the direct-job tests put firewall rules in network namespaces.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& ! command -v nft >/dev/null 2>&1; then \
		echo "installing nftables for the direct-job firewall tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables >/dev/null 2>&1 \
		|| echo "could not install nftables: the direct-job firewall tests will be skipped"; \
	fi
	@# sshd and ssh: SSH through a tunnel (tests/integration/test_tunnels_ssh.py).
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& ! { [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1; }; then \
		echo "installing openssh-server and openssh-client for the tunnel tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server openssh-client \
			>/dev/null 2>&1 \
		|| echo "could not install openssh: the ssh tunnel test will be skipped"; \
	fi
	@# iperf3: the bandwidth tests compare the probe with it on shaped paths.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& ! command -v iperf3 >/dev/null 2>&1; then \
		echo "installing iperf3 for the bandwidth tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 >/dev/null 2>&1 \
		|| echo "could not install iperf3: the bandwidth comparisons will be skipped"; \
	fi

# The browser of the console tests (tests/integration/test_console_browser.py):
# Debian's chromium, driven by the playwright package of the dev extras (which
# never downloads a browser of its own here). Installed only as root with
# apt-get and only when missing; never fails the build (the tests then skip
# and say why).
test-browser:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& ! [ -x /usr/bin/chromium ]; then \
		echo "installing chromium for the console browser tests"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
			&& apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "could not install chromium: the console browser tests will be skipped"; \
	fi

# Benchmarks against scp, rsync, tus and iperf3, then the issue targets
# (rate limits, hub memory, bytes re-sent after a hub crash). Not part of
# `make test`: they take several minutes and install the peers.
BENCH_MD ?= .bench-tmp-results.md
bench: $(STAMP)
	bash bench/bench.sh --markdown $(BENCH_MD) $(BENCH_ARGS)
	bash bench/targets.sh --markdown $(BENCH_MD) limits
	bash bench/targets.sh --markdown $(BENCH_MD) memory
	bash bench/targets.sh --markdown $(BENCH_MD) crash --repeat 3
	bash bench/relay.sh --markdown $(BENCH_MD)
	bash bench/agents.sh --markdown $(BENCH_MD)
	$(BIN)/python bench/collect.py --markdown $(BENCH_MD)

# A/B of two commits in one run, rounds alternating A and B (bench/ab.py):
# `make bench-ab A=068d6a4 B=HEAD BENCH_AB_ARGS="--size 256M --rounds 5"`.
# Flags (exit 1) any path where B takes more than 5 % more time than A.
A ?= HEAD~1
B ?= HEAD
bench-ab: $(STAMP)
	VENV=$(abspath $(VENV)) $(BIN)/python bench/ab.py $(A) $(B) --markdown $(BENCH_MD) $(BENCH_AB_ARGS)

# Start-up of short commands (--version, --help, ls, a push's first byte)
# against python -c pass and ssh -V, medians over rounds (bench/startup.py).
# Messaging against its targets, with NATS JetStream / NATS request-reply and
# Mosquitto QoS 1 in the same run, rounds alternating (bench/messaging.py):
# `make bench-msg BENCH_MSG_ARGS="--rounds 3 --py-spy .bench-tmp/msg-spy"`.
.PHONY: bench-msg
bench-msg: $(STAMP)
	$(BIN)/python bench/messaging.py --markdown $(BENCH_MD) $(BENCH_MSG_ARGS)

# Transfer-job manners against their targets (bench/jobs.py): the direct
# pipe on loopback, 1 GiB, median of 3 rounds, wall and CPU-bound MB/s:
# `make bench-jobs BENCH_JOBS_ARGS="--rounds 5 --py-spy .bench-tmp/jobs-spy"`.
.PHONY: bench-jobs
bench-jobs: $(STAMP)
	$(BIN)/python bench/jobs.py --markdown $(BENCH_MD) $(BENCH_JOBS_ARGS)

.PHONY: bench-startup
bench-startup: $(STAMP)
	$(BIN)/python bench/startup.py $(BENCH_STARTUP_ARGS)

# Relayed compression: `freight cp -r --compress fast` of text from an agent
# against rsync -az over a private sshd, rounds alternating
# (bench/relaycompress.py; installs openssh-server and rsync when missing):
# `make bench-relaycompress BENCH_RELAYCOMPRESS_ARGS="--size 256M --rounds 5"`.
.PHONY: bench-relaycompress
bench-relaycompress: $(STAMP)
	@command -v rsync >/dev/null && { command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; } || \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server rsync || \
		  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server rsync; }; }
	@[ "$$(id -u)" -ne 0 ] || mkdir -p /run/sshd
	$(BIN)/python bench/relaycompress.py --markdown $(BENCH_MD) $(BENCH_RELAYCOMPRESS_ARGS)

# The probe, --limit NN% and --priority background on shaped paths (10, 50
# and 100 Mbit/s x 20 and 80 ms round trip), iperf3 alternating in the same
# run (bench/bandwidth.py; root, tc, iperf3):
# `make bench-bandwidth BENCH_BW_ARGS="--rates 50 --rtts 20"`.
.PHONY: bench-bandwidth
bench-bandwidth: $(STAMP) test-proxies
	$(BIN)/python bench/bandwidth.py --markdown $(BENCH_MD) $(BENCH_BW_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

# Tunnels against ssh -L through a local sshd (bench/tunnels.py): one
# stream, connect -> first byte, interactive beside bulk, 1,000 connections:
# `make bench-tunnels BENCH_TUNNELS_ARGS="--size 1G --rounds 3"`.
.PHONY: bench-tunnels
bench-tunnels: $(STAMP) test-proxies
	$(BIN)/python bench/tunnels.py --markdown $(BENCH_MD) $(BENCH_TUNNELS_ARGS)

# The web console at scale in Chromium (bench/console.py): time to first byte
# of every page and table with 10,000 agents and 1,000,000 events, page
# weight, live-update latency, and what an open console costs the hub with
# 1,000 relayed connections held open (CPU, a 1 GiB push's throughput):
# `make bench-console BENCH_CONSOLE_ARGS="--minute 30 --rounds 3"`.
# The load tester's targets: one process's capacity, a 30-minute soak of its
# memory, and the scaled acceptance sheet (docs/benchmarks.md "Load tester").
.PHONY: bench-loadtest
bench-loadtest: $(STAMP)
	$(BIN)/python bench/loadtest.py capacity
	$(BIN)/python bench/loadtest.py acceptance
	$(BIN)/python bench/loadtest.py soak --minutes 30

.PHONY: bench-console
bench-console: $(STAMP) test-browser
	$(BIN)/python bench/console.py --markdown $(BENCH_MD) $(BENCH_CONSOLE_ARGS)

# UDP through a tunnel against socat on loopback (bench/udp.py): unpaced
# throughput, then loss at 80 % of it, paths alternating per round:
# `make bench-udp BENCH_UDP_ARGS="--size 1400 --seconds 5 --rounds 3"`.
.PHONY: bench-udp
bench-udp: $(STAMP)
	$(BIN)/python bench/udp.py --markdown $(BENCH_MD) $(BENCH_UDP_ARGS)
