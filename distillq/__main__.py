"""``python -m distillq``: the CLI, for processes the project starts itself."""

from distillq.app.cli import main

if __name__ == "__main__":
    main()
