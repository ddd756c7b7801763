"""``python -m cnnlab`` runs the command line (also what ``torchrun -m cnnlab`` uses)."""

from cnnlab.cli import run

run()
