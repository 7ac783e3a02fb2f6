"""``python -m edgetrain`` runs the command line."""

from edgetrain.cli import main

main()
