import sys

from raylsl.cli import main

sys.exit(main())
