import sys

from shadowroute.cli import main

sys.exit(main())
