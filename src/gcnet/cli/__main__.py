import sys

from gcnet.cli import main

sys.exit(main())
