import signal

# First, before any import can start a thread (numpy starts OpenBLAS's): the
# worker learns of its children through a signalfd, which sees a SIGCHLD only
# if no thread could take it instead (worker.py, _spawnd.child_signals). A
# worker forked from the template (template.py) inherits the mask.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})

import sys  # noqa: E402

# Next, before the imports that take a while: no other process of the user
# may attach to us (it would follow every worker forked from the template).
from procmgr.osutil import refuse_ptrace  # noqa: E402

refuse_ptrace()

if "--template" in sys.argv[1:]:
    from spawnd_workers.template import serve  # noqa: E402
    sys.exit(serve())

from spawnd_workers.worker import main  # noqa: E402

sys.exit(main())
