"""`--fail-on-skip`: a run with any skipped test or test module fails.

The README's test command (and so CI, `.ci/run`) installs every optional extra and passes this
option, so a skip there can only mean that something is missing: a dependency, a test data
file, a feature. Each skip stays listed with its reason (`-ra`), a closing section names them,
and the exit status becomes 1 (tests failed). Skips are taken from the test reports and the
collection reports, which reach the main process under pytest-xdist too. Without the option
skips stay plain skips (e.g. a partial install without the torch extra). tests/conftest.py
registers these hooks.
"""

import pytest

OPTION = "--fail-on-skip"


def pytest_addoption(parser):
  parser.addoption(OPTION, action="store_true", default=False,
                   help="fail the run if any test or test module is skipped")


def pytest_configure(config):
  if config.getoption(OPTION):
    config.pluginmanager.register(SkipsFailTheRun(config), "fail_on_skip")


class SkipsFailTheRun:
  """Records every skip; the main process reports them and turns the exit status to 1."""

  def __init__(self, config):
    self.config = config
    self.skips = []

  def _record(self, report):
    if report.skipped and not hasattr(report, "wasxfail"):
      longrepr = report.longrepr
      reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
      self.skips.append(f"{report.nodeid or report.fspath}: {reason}")

  def pytest_runtest_logreport(self, report):
    self._record(report)

  def pytest_collectreport(self, report):
    self._record(report)

  def pytest_terminal_summary(self, terminalreporter):
    if self.skips:
      terminalreporter.section(f"{OPTION}: {len(self.skips)} skip(s) fail this run", red=True)
      for line in self.skips:
        terminalreporter.line(line)

  @pytest.hookimpl(trylast=True)
  def pytest_sessionfinish(self, session):
    is_worker = hasattr(self.config, "workerinput")  # pytest-xdist: only the main process decides
    if self.skips and not is_worker and session.exitstatus in (
        pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
      session.exitstatus = pytest.ExitCode.TESTS_FAILED
