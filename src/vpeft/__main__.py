import sys

from vpeft.cli import main

sys.exit(main())
