# Two commands do all the set-up on a fresh machine (each makes its own virtual environment):
#   make demo   the offline demo of the main job (tiny random model, bundled sample corpus) -> demo-output/
#   make test   what CI runs: ruff, the import contracts, the docs build, the test suite (.ci/run calls the same script)
#   make lock   refresh constraints/ci.txt (the versions CI installs) from the newest releases pyproject.toml allows
.PHONY: demo test lock clean

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

lock:
	bash scripts/lock.sh

clean:
	rm -rf .venv-test .venv-demo .venv-ci demo-output
