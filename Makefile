# Set-up from a fresh clone, then the checks. `make test`: venv, install, pytest. `make demo`:
# a small synthetic sample in the "your own photos" layout, searched and segmented with the
# official SAM2.1-tiny checkpoint. `make gpu-check` (on a GPU machine, no download needed): every
# stage on the GPU against the CPU, torchrun over every GPU, then the quick benchmark on the GPU.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Extra pip flags for torch, e.g. a CUDA index: TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128"
TORCH_PIP_ARGS ?=
# 1 builds sam2's CUDA extension (needs nvcc; only hole filling in masks uses it)
SAM2_BUILD_CUDA ?= 0
SAM2_VERSION ?= 1.1.0

.PHONY: install test gpu-check demo clean
install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -r requirements.txt
	# --no-deps: sam2 would pull torchvision and a CUDA torch; its video path needs neither
	SAM2_BUILD_CUDA=$(SAM2_BUILD_CUDA) $(PY) -m pip install --quiet --no-deps --no-build-isolation "sam2==$(SAM2_VERSION)"
	touch $@

test: install
	$(PY) -m pytest -q

gpu-check: install
	$(PY) -m pytest -q -m gpu -rs tests/test_gpu.py
	$(PY) bench.py --quick --device cuda --output_dir outputs/gpu_check/bench

DEMO_SAM2 = --sam2_cfg configs/sam2.1/sam2.1_hiera_t.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_tiny.pt

demo: install
	$(PY) make_demo_data.py --output_dir datasets/demo_custom
	bash checkpoints/download_ckpts.sh tiny
	$(PY) search_photos.py --data_path datasets/demo_custom $(DEMO_SAM2) --output_dir outputs/demo --visualize 4

clean:
	rm -rf $(VENV) outputs datasets/demo_custom
