"""``python -m avtool``."""

from avtool.cli.app import main

main()
