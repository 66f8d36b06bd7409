"""`python -m moebench.cli` is `moebench`."""
from moebench.cli import main

main()
