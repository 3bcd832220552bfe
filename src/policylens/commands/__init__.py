"""CLI commands by area; each module registers its commands on ``framework.app`` on import (``cli`` imports them all)."""
