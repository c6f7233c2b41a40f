"""`python -m cratelab ...`, as torchrun launches it: torchrun -m cratelab train CONFIG --out DIR."""

from .cli import main

if __name__ == "__main__":
    main()
