import sys

from procmgr.cli import main

sys.exit(main())
