"""``python -m chatledger``: the same command line as the ``chatledger`` script.

Only this entry point imports the CLI; ``import chatledger`` never does.
"""

from chatledger.entrypoints.cli import main

if __name__ == "__main__":
    main()
