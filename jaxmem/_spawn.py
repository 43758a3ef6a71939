"""The command line that starts a worker process (``jaxmem.worker``) watching its parent.

Example:
  >>> from jaxmem._spawn import command
  >>> command("/tmp/x", "--serve")[1]
  '-c'
"""

from __future__ import annotations

import os
import sys

#: Runs before anything else in a worker process (``python -c``, so that not even jaxmem's
#: package is imported yet): a daemon thread that, once the parent is gone, removes the
#: worker's folder and ends the process (``os._exit`` ends it even inside a compile); then the
#: worker's ``main``.
_BOOT = """\
import os, shutil, sys, threading, time
parent, folder = int(sys.argv[1]), sys.argv[2]
def watch():
    while os.getppid() == parent:
        time.sleep(0.2)
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(3)
threading.Thread(target=watch, name="jaxmem-parent-watch", daemon=True).start()
sys.argv = ["jaxmem.worker", *sys.argv[3:]]
from jaxmem.worker import main
sys.exit(main(sys.argv[1:]))
"""


def command(folder: str, *args: str) -> list[str]:
    """The command line of a worker for this (parent) process, watching it from its first
    instruction; ``folder`` is removed if the parent disappears."""
    return [sys.executable, "-c", _BOOT, str(os.getpid()), folder, *args]
