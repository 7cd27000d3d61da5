"""``python -m tests.run_code "<code>"``: run a line of Python (for launchers such as torchrun
that start a module, not ``-c``)."""

import sys

exec(sys.argv[1])  # noqa: S102 - test helper: the code is the test's own
