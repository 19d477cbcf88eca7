# shortener: the two commands a newcomer needs are `make up` and `make test`.
# Every target installs what it needs (Debian packages, the virtualenv) on a fresh Debian 12
# machine, as root.

SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV        := $(ROOT)/.venv
PY          := $(VENV)/bin/python
BIN         := $(VENV)/bin
LAB         := python3 $(ROOT)/lab/lab.py
APT_PACKAGES := python3-venv python3-dev gcc libpq-dev postgresql pgbouncer redis-server \
                chromium chromium-driver systemd-container debootstrap iptables openssh-client \
                curl ca-certificates rsync prometheus prometheus-alertmanager \
                nginx libnginx-mod-http-lua lua-nginx-redis
# make up's all-in-one host: its name and address live in labkit/hosts.py (and its inventory).
LAB_AIO     := $(shell cd $(ROOT) && python3 -c 'from labkit.hosts import AIO_NAME, AIO_ADDRESS; print(AIO_NAME, AIO_ADDRESS)')
LAB_HOST    := $(word 1,$(LAB_AIO))=$(word 2,$(LAB_AIO))
LAB_ADDR    := $(word 2,$(LAB_AIO))
# The fresh host `make restore-drill` restores onto (made and removed by the target): labkit/hosts.py.
LAB_DRILL   := $(shell cd $(ROOT) && python3 -c 'from labkit.hosts import DRILL_NAME, DRILL_ADDRESS; print(DRILL_NAME, DRILL_ADDRESS)')
DRILL_HOST  := $(word 1,$(LAB_DRILL))=$(word 2,$(LAB_DRILL))
DRILL_INVENTORY := inventories/lab
RESTORE_TARGET ?=
# make canary-demo's host: make up's by default, any converged host's inventory and address.
CANARY_INVENTORY ?= ansible/inventories/lab
CANARY_ADDR ?= $(LAB_ADDR)
# Extra arguments for make test-cluster's `molecule test`: '--destroy never' keeps the five
# hosts up afterwards (for make chaos-cluster or a re-run of `molecule verify -s cluster`).
MOLECULE_ARGS ?=
export ANSIBLE_CONFIG := $(ROOT)/ansible/ansible.cfg

.PHONY: help deps vagrant-deps vagrant-box vagrant-up vagrant-verify vagrant-down venv requirements lint test test-service test-molecule test-cluster up down dev seed clean loadtest bench bench-stats openloop restore-drill chaos canary-demo chaos-cluster

# The recipe lines that install the Debian packages of a list that are missing: $(call apt_install,LIST).
define apt_install
	missing=""
	for p in $(1); do dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done
	if [ -n "$$missing" ]; then
	  echo "installing:$$missing"
	  export DEBIAN_FRONTEND=noninteractive
	  apt-get update -qq
	  apt-get install -y -qq --no-install-recommends $$missing >/dev/null
	fi
endef

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## install the Debian packages the project uses (only those missing)
	$(call apt_install,$(APT_PACKAGES))

# Every package pinned with its hashes (requirements-dev.txt, compiled by `make requirements`):
# pip refuses anything unpinned or whose bytes differ. pip itself is Debian's (python3-venv).
$(VENV)/.installed: requirements.txt requirements-dev.txt
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements-dev.txt
	touch $@

venv: deps $(VENV)/.installed ## the virtualenv with the service, test and Ansible tools

# --- Supply chain: requirements*.in -> requirements*.txt with hashes ---------------------------
# pip-tools in a virtualenv of its own (not .venv: it must not change what it compiles for).
PIP_TOOLS_VENV := $(ROOT)/.pip-tools
PIP_COMPILE    := CUSTOM_COMPILE_COMMAND="make requirements" $(PIP_TOOLS_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
                  --strip-extras --no-emit-index-url --no-emit-find-links

requirements: ## recompile requirements.txt and requirements-dev.txt (hashes) from the *.in files
	[ -x $(PIP_TOOLS_VENV)/bin/pip-compile ] || { python3 -m venv $(PIP_TOOLS_VENV); $(PIP_TOOLS_VENV)/bin/pip install -q pip-tools==7.6.2; }
	cd $(ROOT)
	$(PIP_COMPILE) --output-file=requirements.txt requirements.in
	$(PIP_COMPILE) --output-file=requirements-dev.txt requirements-dev.in

lint: venv ## ruff, yamllint, ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint -s .
	cd $(ROOT) && $(BIN)/ansible-lint --profile production -q ansible/ molecule/
	promtool check rules ansible/roles/prometheus/files/rules/*.yml
	cd $(ROOT)/ansible/roles/prometheus/tests/rules && promtool test rules *.yml

test-service: venv ## the service's pytest suite against real PostgreSQL, PgBouncer, Redis (coverage >= 95%)
	cd $(ROOT) && $(PY) -m pytest -p no:cacheprovider --cov --cov-report=term-missing:skip-covered tests

test-molecule: venv ## deploy to a throw-away lab host with Molecule: create, converge, idempotence, verify, destroy
	cd $(ROOT) && PATH=$(BIN):$$PATH $(BIN)/molecule test -s default

test: test-service test-molecule ## everything CI runs: the service tests, then the Molecule default scenario

test-cluster: venv ## the Molecule cluster scenario (lb, two app hosts, db, cache); MOLECULE_ARGS='--destroy never' keeps the hosts
	# Destroy first, always: '--destroy never' skips the sequence's own first destroy, and a
	# state left "created" by hosts removed outside Molecule would then skip the create.
	cd $(ROOT) && PATH=$(BIN):$$PATH $(BIN)/molecule destroy -s cluster
	PATH=$(BIN):$$PATH $(BIN)/molecule test -s cluster $(MOLECULE_ARGS)

# What `make up` and `make vagrant-up` print about a deployed host: $(1) is its address (a make
# value, or a shell variable written $$name).
define TRY_IT
echo "try it:"
	echo "  curl -s -X POST http://$(1)/urls -H 'Content-Type: application/json' -d '{\"original_url\": \"https://www.debian.org/\"}'"
	echo "  curl -si http://$(1)/<short_code>   # 302 to the original URL"
	echo "HTTPS too: curl --cacert ansible/.secrets/lab_ca/ca.crt https://$(1)/health"
	echo "the admin API key (keys profile: everything but links, redirects and /health needs a key) is in"
	echo "  ansible/.secrets/shortener_admin_api_key"
	echo "  curl -s 'http://$(1)/events?event_type=click' -H \"Authorization: Bearer \$$(cat ansible/.secrets/shortener_admin_api_key)\""
	echo "logs in a browser: https://$(1):8443/logs/  (lab CA: ansible/.secrets/lab_ca/ca.crt; user operator, password in ansible/.secrets/journal_gateway_password)"
endef

up: venv ## deploy the whole stack to a local lab host and print where it answers
	start=$$(date +%s)
	$(LAB) up $(LAB_HOST)
	cd $(ROOT)/ansible && $(BIN)/ansible-playbook -i inventories/lab playbooks/site.yml
	echo
	echo "shortener answers at http://$(LAB_ADDR)/  (deployed in $$(( $$(date +%s) - start )) s)"
	$(call TRY_IT,$(LAB_ADDR))
	echo "pages sent to the lab's Discord sink: python3 lab/lab.py ssh lab-aio curl -s 127.0.0.1:9095/messages"
	echo "shell on the host: python3 lab/lab.py shell lab-aio;  remove it: make down"

# --- The Vagrant path (issue 15; docs/deployment.md "The Vagrant path") ------------------------
# One VM under libvirt from a box built here (no box can be downloaded), provisioned by
# vagrant/Vagrantfile with site.yml. Not in `make deps` or CI: libvirt and qemu are big, and the
# VM is slow where KVM does not work (emulation).
# sudo: under mitogen the controller's own tasks (delegate_to: localhost) become root with it,
# as Vagrant's inventory asks (ansible_become for all), even when Ansible already runs as root.
VAGRANT_APT_PACKAGES := vagrant vagrant-libvirt libvirt-daemon-system qemu-system-x86 qemu-utils \
                        dnsmasq-base debootstrap e2fsprogs iptables sudo
VAGRANT_BOX     ?= shortener/debian12
# The VM's libvirt network (Vagrant's management network, NAT): vagrant/Vagrantfile's defaults.
VAGRANT_NETWORK := shortener-vagrant
# Boxes, the qemu wrapper and the record of the daemons the targets started. Not under /root:
# qemu runs as libvirt-qemu and reads the box's kernel and initrd from VAGRANT_HOME.
VAGRANT_STATE   ?= /var/lib/shortener-vagrant
# kvm needs hardware virtualisation (the kvm_intel or kvm_amd module); anything else (no KVM,
# or a nested KVM that boots no stock Debian kernel) means emulation.
VAGRANT_LIBVIRT_DRIVER ?= $(shell [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ] && echo kvm || echo qemu)
VAGRANT_NICE    ?= 10
# Ansible's mitogen strategy for the provisioning (true or false): one Python kept in the VM
# instead of a new one per task, which is what an emulated VM spends its time on (measured:
# docs/deployment.md, "Vagrant").
VAGRANT_MITOGEN ?= true
# Grafana's package repository is not a registry this machine may reach (make up's lab skips it too).
VAGRANT_GRAFANA ?= false
VMHOST  := cd $(ROOT) && SHORTENER_VAGRANT_STATE_DIR=$(VAGRANT_STATE) VAGRANT_HOME=$(VAGRANT_STATE)/vagrant.d VAGRANT_CHECKPOINT_DISABLE=1 python3 -m vagrant.vmhost
VAGRANT_ENV := VAGRANT_HOME=$(VAGRANT_STATE)/vagrant.d VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt \
               SHORTENER_VAGRANT_BOX=$(VAGRANT_BOX) SHORTENER_VAGRANT_LIBVIRT_DRIVER=$(VAGRANT_LIBVIRT_DRIVER) \
               SHORTENER_VAGRANT_GRAFANA=$(VAGRANT_GRAFANA) SHORTENER_VAGRANT_BOOT_TIMEOUT=1800 \
               SHORTENER_VAGRANT_CONSOLE_LOG=$(VAGRANT_STATE)/console.log
VAGRANT := cd $(ROOT)/vagrant && env $(VAGRANT_ENV) PATH=$(BIN):$$PATH vagrant

vagrant-deps: ## the Debian packages of the Vagrant path (vagrant, vagrant-libvirt, libvirt, qemu; only those missing)
	$(call apt_install,$(VAGRANT_APT_PACKAGES))

vagrant-box: vagrant-deps ## build the Debian 12 box for Vagrant's libvirt provider from Debian packages, add it to Vagrant (VAGRANT_BOX)
	start=$$(date +%s)
	$(VMHOST) box --name $(VAGRANT_BOX)
	echo "box $(VAGRANT_BOX) built in $$(( $$(date +%s) - start )) s (VAGRANT_HOME=$(VAGRANT_STATE)/vagrant.d)"

vagrant-up: venv vagrant-deps ## boot the VM with libvirt (starting its daemons), provision it with site.yml, print where it answers
	$(VAGRANT) box list | grep -q '^$(VAGRANT_BOX) ' || { echo "no box $(VAGRANT_BOX): make vagrant-box first"; exit 1; }
	# qemu under nice (the machine is shared; under emulation the VM takes every core it is given).
	export SHORTENER_VAGRANT_EMULATOR=$$($(VMHOST) start --nice $(VAGRANT_NICE))
	rm -f $(VAGRANT_STATE)/console.log  # libvirt appends: this boot's only
	start=$$(date +%s)
	$(VAGRANT) up --provider=libvirt --no-provision
	boot=$$(( $$(date +%s) - start ))
	echo "VM up (SSH answers) in $$boot s, driver $(VAGRANT_LIBVIRT_DRIVER); provisioning with site.yml"
	if [ "$(VAGRANT_MITOGEN)" = true ]; then
	  export ANSIBLE_STRATEGY=mitogen_linear ANSIBLE_STRATEGY_PLUGINS=$$($(PY) -c 'import ansible_mitogen, os; print(os.path.join(os.path.dirname(ansible_mitogen.__file__), "plugins", "strategy"))')
	fi
	$(VAGRANT) provision || { echo "provisioning FAILED after $$(( $$(date +%s) - start - boot )) s"; exit 1; }
	addr=$$($(VAGRANT) ssh-config | awk '$$1 == "HostName" {print $$2}')
	echo
	echo "shortener answers at http://$$addr/  (boot $$boot s, provisioning $$(( $$(date +%s) - start - boot )) s)"
	$(call TRY_IT,$$addr)
	echo "vagrant by hand: cd vagrant && env $(VAGRANT_ENV) vagrant ssh|provision|halt;  remove it: make vagrant-down"

# The inventory Vagrant wrote at the first provisioning: the VM, its groups, how to connect.
VAGRANT_INVENTORY := $(ROOT)/vagrant/.vagrant/provisioners/ansible/inventory/vagrant_ansible_inventory
VAGRANT_VERIFY    ?= molecule/default/tests
vagrant-verify: venv ## the default scenario's verify tests against the VM (VAGRANT_VERIFY='file ...' for some)
	[ -e $(VAGRANT_INVENTORY) ] || { echo "no $(VAGRANT_INVENTORY): make vagrant-up first"; exit 1; }
	# The provisioning reads two inventory sources (Vagrant's file, inventories/vagrant's group_vars);
	# testinfra takes one: a folder holding both, so the tests see the variables the play saw.
	inv=$(VAGRANT_STATE)/verify-inventory
	rm -rf $$inv && mkdir -p $$inv
	ln -s $(VAGRANT_INVENTORY) $$inv/hosts
	ln -s $(ROOT)/ansible/inventories/vagrant/group_vars $$inv/group_vars
	cd $(ROOT) && PATH=$(BIN):$$PATH MOLECULE_INVENTORY_FILE=$$inv $(PY) -m pytest -p no:cacheprovider \
	  --connection=ansible --ansible-inventory=$$inv $(VAGRANT_VERIFY)

vagrant-down: ## destroy the VM, remove its libvirt network, stop the libvirt daemons vagrant-up started
	if ! command -v vagrant >/dev/null; then echo "vagrant is not installed: nothing to remove"; exit 0; fi
	$(VMHOST) start >/dev/null
	$(VAGRANT) destroy -f
	$(VMHOST) stop --network $(VAGRANT_NETWORK)

restore-drill: venv ## restore the latest backup (or RESTORE_TARGET='YYYY-MM-DD HH:MM:SS', UTC) onto a fresh lab host: data compared, RTO printed
	name=$(firstword $(subst =, ,$(DRILL_HOST))); addr=$(lastword $(subst =, ,$(DRILL_HOST)))
	$(LAB) down "$$name" >/dev/null 2>&1 || true
	$(LAB) up $(DRILL_HOST)
	cd $(ROOT)/ansible && $(BIN)/ansible-playbook -i $(DRILL_INVENTORY) playbooks/restore-drill.yml \
	  -e "$$(printf '{"restore_drill_name": "%s", "restore_drill_address": "%s", "restore_drill_target": "%s"}' "$$name" "$$addr" "$(RESTORE_TARGET)")"
	$(LAB) down "$$name"

down: ## remove the lab host(s), the bridge and the NAT rule
	$(LAB) down

loadtest: venv ## Locust ladder (50 .. 5000 users) against the lab host: CSV, markdown table, charts (LOADTEST_ARGS=...)
	$(PY) -m pip install -q -r $(ROOT)/loadtests/requirements.txt
	cd $(ROOT) && $(PY) -m loadtests.run --target http://$(LAB_ADDR) $(LOADTEST_ARGS)

bench: venv ## wrk: hot/cold redirect, link creation vs static-302 and bare-WSGI references; click count check (BENCH_ARGS=...)
	command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	cd $(ROOT) && $(PY) -m loadtests.bench --target http://$(LAB_ADDR) $(BENCH_ARGS)

bench-stats: venv ## analytics at scale: 10M generated clicks (90 days, 10,000 links) on the lab host, then stats p95s (BENCH_STATS_ARGS=...)
	cd $(ROOT) && $(PY) -m loadtests.bench_stats --target http://$(LAB_ADDR) $(BENCH_STATS_ARGS)

openloop: venv ## hey: latency at fixed offered redirect rates over 1000 open connections; click check (OPENLOOP_ARGS=...)
	command -v hey >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hey >/dev/null; }
	cd $(ROOT) && $(PY) -m loadtests.openloop --target http://$(LAB_ADDR) $(OPENLOOP_ARGS)

chaos: venv ## the chaos suite against the lab host: every experiment under traffic -> docs/chaos.md, docs/img/chaos/ (CHAOS_ARGS=--only NAME...)
	$(PY) -m pip install -q "$$(grep '^matplotlib==' $(ROOT)/loadtests/requirements.txt)"
	cd $(ROOT) && $(PY) -m chaos.run --suite aio --inventory ansible/inventories/lab $(CHAOS_ARGS)

canary-demo: venv ## after make up: a bad release rolled back by its canary, a good one promoted, a rolling deploy, rollback.yml, under steady load (CANARY_INVENTORY= CANARY_ADDR= CANARY_ARGS=...)
	cd $(ROOT) && $(PY) -m loadtests.canary_demo --inventory $(CANARY_INVENTORY) --target http://$(CANARY_ADDR) $(CANARY_ARGS)

# The five-host lab of the network faults (tc netem, nftables partitions): its inventory, like
# ansible/inventories/lab-cluster (a copy with other names and addresses under .lab-inv/ works).
CHAOS_CLUSTER_INVENTORY ?= ansible/inventories/lab-cluster
chaos-cluster: venv ## the network experiments against the five-host lab -> docs/chaos-cluster.md (CHAOS_CLUSTER_INVENTORY=..., CHAOS_ARGS=...)
	$(PY) -m pip install -q "$$(grep '^matplotlib==' $(ROOT)/loadtests/requirements.txt)"
	cd $(ROOT) && $(PY) -m chaos.run --suite cluster --inventory $(CHAOS_CLUSTER_INVENTORY) $(CHAOS_ARGS)

dev: venv ## run the service locally (Flask dev server) against private PostgreSQL and Redis
	eval "$$($(PY) -m devstack up)"
	export SHORTENER_BIND=$${SHORTENER_BIND:-127.0.0.1:8000} SHORTENER_LOG_LEVEL=$${SHORTENER_LOG_LEVEL:-INFO} SHORTENER_ACCESS_PROFILE=open
	echo "serving on http://$$SHORTENER_BIND/ (stop with Ctrl-C; 'python -m devstack down' stops the databases)"
	$(PY) -m app

seed: venv ## load ../shared/seed into the `make dev` database
	eval "$$($(PY) -m devstack up)"
	SHORTENER_ACCESS_PROFILE=open $(PY) -m app.seed $(ROOT)/../shared/seed

clean: ## stop the test databases and remove local state
	[ -x $(PY) ] && $(PY) -m devstack down || true
	rm -rf $(ROOT)/.test-services $(ROOT)/.coverage*
