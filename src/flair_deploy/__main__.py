"""``python -m flair_deploy`` runs the command-line interface."""

from flair_deploy.cli import main

if __name__ == "__main__":
    main()
