import sys

from dyadic.cli.main import main

sys.exit(main())
