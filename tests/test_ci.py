"""The README's test command and .ci/run must stay the same command, and it allows no skip."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


def _commands(text: str) -> list[str]:
  return [line.strip() for line in text.splitlines() if "python -m pytest" in line]


def test_ci_runs_exactly_the_readme_test_command():
  readme = _commands((REPO_ROOT / "README.md").read_text())
  ci = _commands((REPO_ROOT / ".ci" / "run").read_text())
  assert len(ci) == 1, ci
  assert ci[0] in readme, f".ci/run runs {ci[0]!r}, README shows {readme!r}"
  assert ci[0].endswith(" --fail-on-skip"), ci[0]  # all extras installed: a skip is a failure


def test_ci_treats_no_tests_collected_as_failure():
  ci = (REPO_ROOT / ".ci" / "run").read_text()
  assert re.search(r'"\$status" -eq 5 \]; then\s+echo[^\n]*\n\s+exit 1', ci)


def test_benchmarks_md_is_generated_from_the_records():
  done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "collect.py"), "--check"],
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr


_SKIPPING_TESTS = {
    "test_skips.py": "import pytest\n\n"
                     "def test_skip_call():\n  pytest.skip('no data')\n\n"
                     "@pytest.mark.skip(reason='marked')\ndef test_skip_marker():\n  pass\n\n"
                     "def test_passes():\n  pass\n",
    "test_module_skip.py": "import pytest\n\n"
                           "pytest.importorskip('a_module_that_is_not_installed')\n\n"
                           "def test_never_collected():\n  pass\n",
}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_fail_on_skip_turns_every_skip_into_a_failure(tmp_path, workers):
  """The hooks of tests/fail_on_skip.py, in a separate pytest run (serial and under xdist)."""
  (tmp_path / "conftest.py").write_text("from fail_on_skip import *  # noqa: F403\n")
  for name, text in _SKIPPING_TESTS.items():
    (tmp_path / name).write_text(text)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "tests"),
                                                     os.environ.get("PYTHONPATH", "")]))

  def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *workers, *args,
         str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)

  plain = run()
  assert plain.returncode == 0, plain.stdout + plain.stderr
  assert "1 passed, 3 skipped" in plain.stdout, plain.stdout
  strict = run("--fail-on-skip")
  assert strict.returncode == 1, strict.stdout + strict.stderr
  summary = strict.stdout[strict.stdout.index("--fail-on-skip: 3 skip(s) fail this run"):]
  for reason in ("no data", "marked", "a_module_that_is_not_installed"):
    assert reason in summary, (reason, strict.stdout)
  assert "1 passed, 3 skipped" in strict.stdout
