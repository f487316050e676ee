"""`python -m study.cli`: the `resstudy` command."""

import sys

from study.cli.app import entry

if __name__ == "__main__":  # importing it (a walk over the package's modules) runs nothing
    sys.exit(entry())
