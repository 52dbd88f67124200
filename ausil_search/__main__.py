"""`python -m ausil_search` runs the command-line tool (same as `ausil-search`)."""

from ausil_search.cli import main

main()
