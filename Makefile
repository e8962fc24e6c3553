# Two commands set up everything on a fresh machine: `make synth` and `make test`. Each installs what it needs,
# pinned, into .venv (Python) and node_modules (the cdktf CLI), and nothing globally.
#   make synth            synthesize ENV (default: local) into cdktf.out/$(ENV)
#   make list|diff STACK= the cdktf CLI's view of the synthesized stacks
#   make plan|apply|destroy|bootstrap ENV=dev   Terraform, per stack, in dependency order (see README)
#   make test|lint|scan|golden|bench|local|canvas

ENV ?= local
STACK ?=
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CDKTF := node_modules/.bin/cdktf
# pytest-xdist workers for `make test`: the suite waits on its local servers as much as it computes, so two workers
# on two cores take it from about 13.5 to about 7 minutes. Each worker has its own session moto server and synth.
TEST_WORKERS ?= 2

# jsii prints an end-of-life banner for Node 20 on every run; these two switches silence exactly that banner.
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CHECKPOINT_DISABLE := 1

.DEFAULT_GOAL := synth
.PHONY: synth list diff plan apply destroy bootstrap test lint scan golden bench local demo canvas browser deps clean

$(STAMP): requirements.lock
	@$(PYTHON_BOOT) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@touch $@

$(CDKTF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

deps: $(STAMP)

# The canvas page's browser test drives Debian's headless Chromium (selenium + chromedriver, same version): installed
# from Debian's packages when missing (root, as on CI machines); elsewhere install chromium + chromium-driver yourself.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver; }

synth: $(STAMP)
	ENV=$(ENV) $(PY) main.py
	@echo "synthesized ENV=$(ENV) into cdktf.out/$(ENV)/stacks"

list: $(STAMP) $(CDKTF)
	CDKTF_CONTEXT_JSON='{"environment":"$(ENV)"}' ENV=$(ENV) $(CDKTF) list --output cdktf.out/$(ENV)

diff: synth $(CDKTF)
	@test -n "$(STACK)" || { echo "diff needs STACK=<name> (see make list)"; exit 2; }
	$(PY) scripts/tf.py preflight --env $(ENV)
	ENV=$(ENV) $(CDKTF) diff $(STACK) --skip-synth --output cdktf.out/$(ENV)

plan: synth
	$(PY) scripts/tf.py plan --env $(ENV)

apply: synth
	$(PY) scripts/tf.py apply --env $(ENV)

destroy: synth
	$(PY) scripts/tf.py destroy --env $(ENV)

bootstrap: $(STAMP)
	ENV=$(ENV) GPU_ORCH_BOOTSTRAP=1 $(PY) main.py
	$(PY) scripts/tf.py bootstrap --env $(ENV)

test: $(STAMP) browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

lint: $(STAMP)
	bash scripts/lint.sh

scan: $(STAMP)
	$(PY) scripts/scan.py --install

golden: $(STAMP)
	$(PY) scripts/synth.py

bench: $(STAMP)
	$(PY) bench/synth.py
	$(PY) bench/idle_cost.py
	$(PY) bench/lifecycle.py
	$(PY) bench/canvas.py

canvas: $(STAMP)
	$(PY) scripts/canvas_local.py

clean:
	rm -rf cdktf.out build plans

local demo: $(STAMP)
	$(PY) -m localaws.demo
