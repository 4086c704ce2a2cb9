"""`python -m edgelin`: the `edgelin` command."""
from edgelin.cli import main

if __name__ == "__main__":
    main()
