import sys

from pybpfmap.cli import main

sys.exit(main())
