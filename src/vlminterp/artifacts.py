"""`python -m vlminterp.artifacts push|pull`: the Makefile's entry point to
`vlminterp.workflow.artifacts`."""
import sys

from vlminterp.workflow.artifacts import main

if __name__ == "__main__":
    sys.exit(main())
