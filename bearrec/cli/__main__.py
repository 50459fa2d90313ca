"""`python -m bearrec.cli` (and `accelerate launch -m bearrec.cli`)."""

from bearrec.cli import main

main()
