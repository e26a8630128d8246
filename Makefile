# Every target sets up .venv itself (PyTorch pinned; the CPU build on machines without CUDA).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo edit-demo test lint bench learn train-demo eval-demo bench-eval data-demo bench-data ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[ui,data,train,dev]'
	touch $@

# Two toy-world subjects never seen in training, each in its box, by the shipped `toy` model
# (docs/learning.md): seconds on a CPU.
demo: setup
	$(VENV)/bin/msdiffusion generate --preset toy \
	  --prompt "a ball and a moon on sand" \
	  --subject examples/toy/ball.png --box 0.03,0.25,0.48,0.72 --phrase ball \
	  --subject examples/toy/moon.png --box 0.52,0.25,0.97,0.72 --phrase moon \
	  --scale 1.0 --guidance 5 --steps 20 --seed 0 --num-images 4 --out outputs/demo

# Subjects put into an existing picture (docs/edit-demo.png): a toy picture with a star, then a
# moon inpainted into its right half by the shipped `toy` model; under a minute on a CPU.
edit-demo: setup
	$(VENV)/bin/msdiffusion generate --preset toy --prompt "a star on sand" \
	  --subject examples/toy/star.png --box 0.05,0.25,0.45,0.72 --phrase star \
	  --scale 1.0 --guidance 5 --steps 20 --seed 0 --out outputs/edit-demo/picture
	picture=$$(ls -d outputs/edit-demo/picture/*/ | tail -1)image_0.png && \
	$(VENV)/bin/msdiffusion generate --preset toy --prompt "a star and a moon on sand" \
	  --init-image $$picture --inpaint-mask examples/toy/right-half.png \
	  --subject examples/toy/moon.png --box 0.55,0.25,0.95,0.72 --phrase moon \
	  --scale 1.0 --guidance 5 --steps 20 --seed 0 --num-images 4 --out outputs/edit-demo/inpainted && \
	$(PY) examples/toy/edit_demo_figure.py --picture $$picture --mask examples/toy/right-half.png \
	  --results $$(ls -d outputs/edit-demo/inpainted/*/ | tail -1) --out outputs/edit-demo/edit-demo.png

# The learning proof (docs/learning.md). SETTING=quick (default): the shipped base, brief adapters,
# <= 15 min on 2 cores, report in outputs/learn-quick/. SETTING=full: the base from scratch and
# every ablation (a few CPU hours), report in docs/learning.md.
SETTING ?= quick
learn: setup
	$(PY) -m msdiffusion.toyworld.learn --setting $(SETTING) \
	  $(if $(filter full,$(SETTING)),--docs docs/learning.md --ship)

test: setup
	bash scripts/install_browser.sh
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/lint-imports --no-cache

bench: setup
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/train_throughput.py

train-demo: setup
	rm -rf outputs/train-demo
	$(PY) examples/train/make_demo_data.py --out outputs/train-demo/data
	$(VENV)/bin/msdiffusion data check outputs/train-demo/data/train.jsonl
	OMP_NUM_THREADS=1 $(VENV)/bin/msdiffusion train --config configs/train_tiny.json
	$(VENV)/bin/msdiffusion generate --preset tiny --adapter outputs/train-demo/run/adapter \
	  --prompt "a dog and a cat on a plain background" \
	  --subject examples/subjects/dog.png --box 0.05,0.3,0.5,0.9 --phrase dog \
	  --subject examples/subjects/cat.png --box 0.5,0.3,0.95,0.9 --phrase cat \
	  --steps 20 --seed 0 --out outputs/train-demo/generated

eval-demo: setup
	rm -rf outputs/eval-tiny outputs/eval-tiny-base outputs/eval-compare
	$(VENV)/bin/msdiffusion eval standin outputs/evaldata
	$(VENV)/bin/msdiffusion eval generate msbench --data outputs/evaldata --out outputs/eval-tiny \
	  --protocol paper --preset tiny --limit 13 --images-per-sample 1 --steps 4 \
	  --height 256 --width 256
	$(VENV)/bin/msdiffusion eval score outputs/eval-tiny --models tiny
	$(VENV)/bin/msdiffusion eval generate msbench --data outputs/evaldata \
	  --out outputs/eval-tiny-base --protocol paper --preset tiny --limit 13 \
	  --images-per-sample 1 --steps 4 --height 256 --width 256 --scale 0
	$(VENV)/bin/msdiffusion eval score outputs/eval-tiny-base --models tiny
	$(VENV)/bin/msdiffusion eval compare outputs/eval-tiny outputs/eval-tiny-base \
	  --names adapter,base --out outputs/eval-compare

bench-eval: setup
	$(PY) benchmarks/eval_throughput.py

data-demo: setup
	$(VENV)/bin/msdiffusion data demo --out outputs/data-demo

bench-data: setup
	$(PY) benchmarks/data_throughput.py

ui: setup
	$(VENV)/bin/msdiffusion ui --preset tiny

# The environment and caches only: outputs/ holds results (the commands' default folder).
clean:
	rm -rf $(VENV) .pytest_cache
