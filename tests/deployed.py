"""The daemon under test, as a user gets it.

``FASTVFS_BIN`` names the ``fastvfs`` entry point of a wheel installed into its own virtual
environment (``make test`` builds and installs one: see the Makefile's ``deployed`` target);
every test that starts a daemon starts that program.  Without it (a developer running one test
file by hand) the daemon runs from the source tree as ``python -m fastvfs``.
"""

import os
import sys


def fastvfs_command():
    """The argv prefix that starts the fastvfs daemon under test."""
    binary = os.environ.get("FASTVFS_BIN")
    return [binary] if binary else [sys.executable, "-m", "fastvfs"]


FASTVFS = fastvfs_command()
