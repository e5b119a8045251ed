"""The README's test command and .ci/run must stay the same command."""

import re
import subprocess
import sys

from conftest import REPO_ROOT


def _commands(text: str) -> list[str]:
  return [line.strip() for line in text.splitlines() if "python -m pytest" in line]


def test_ci_runs_exactly_the_readme_test_command():
  readme = _commands((REPO_ROOT / "README.md").read_text())
  ci = _commands((REPO_ROOT / ".ci" / "run").read_text())
  assert len(ci) == 1, ci
  assert ci[0] in readme, f".ci/run runs {ci[0]!r}, README shows {readme!r}"


def test_ci_treats_no_tests_collected_as_failure():
  ci = (REPO_ROOT / ".ci" / "run").read_text()
  assert re.search(r'"\$status" -eq 5 \]; then\s+echo[^\n]*\n\s+exit 1', ci)


def test_benchmarks_md_is_generated_from_the_records():
  done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "collect.py"), "--check"],
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
