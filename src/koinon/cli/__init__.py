"""The ``koinon`` command. ``main.py`` parses arguments and maps errors to one-line messages; ``demo.py`` runs a
local swarm of separate peer processes. The library never imports this package."""
