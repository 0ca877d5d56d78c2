"""`python -m convnext ...` (and `torchrun ... -m convnext train ...`) runs the command-line interface."""
from convnext.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
