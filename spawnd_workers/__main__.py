import sys

from spawnd_workers.worker import main

sys.exit(main())
