"""``python -m edgetrain.cli`` runs the command line."""

from edgetrain.cli import main

main()
