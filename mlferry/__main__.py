"""`python -m mlferry` runs the command line."""

from mlferry.cli import main

main()
