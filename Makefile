# The two commands a user needs (see README.md):
#   make report   set up .venv if needed, then run the main job (the executed-notebook report)
#   make test     set up .venv if needed, then run the test suite
VENV := .venv
PROFILE ?= default

.PHONY: setup report test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml tools/setup_env.sh
	bash tools/setup_env.sh

report: setup
	$(VENV)/bin/reidkit report --profile $(PROFILE)

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) reports
