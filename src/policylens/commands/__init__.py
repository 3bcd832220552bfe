"""CLI commands by area; each module registers its commands on ``policylens.cli.app`` on import."""
