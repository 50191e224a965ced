"""``python -m homing.cli``: the same entry point as the installed ``homing``."""

from homing.cli import main

main()
