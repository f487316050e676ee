"""`python -m study.cli`: the `resstudy` command."""

import sys

from study.cli import main

sys.exit(main())
