"""`python -m ausil_search.cli` runs the command-line tool (same as `ausil-search`)."""

from . import main

main()
