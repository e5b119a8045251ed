"""The two kinds of expected failure, which every command-line tool reports the same way.

- `InputError`: bad input or usage (a file, key, shape, value, flag or config field that cannot
  work). The message names what is wrong and what was expected. CLIs exit with status 2.
- `RunError`: the input was fine but the run could not finish (a full disk, a NaN loss, a
  checkpoint that cannot be written). CLIs exit with status 1.

Both are printed as one line without a traceback (`DCFNET_TRACEBACK=1` shows it); anything else
is a bug and keeps its traceback. Modules raise subclasses that name their domain
(`data.DataFormatError`, `convert.ConversionError`, `checkpoint.CheckpointError`, ...).
"""


class InputError(ValueError):
  """Bad input or usage; the message names the file, key, shape, value or flag and the fix."""


class RunError(RuntimeError):
  """A run with valid input could not finish; the message says what is kept and what to do."""


class DataWarning(UserWarning):
  """Data look suspicious but are usable (extra keys, a value range that looks low)."""
