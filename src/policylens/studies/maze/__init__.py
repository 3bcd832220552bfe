"""Goal misgeneralization in the maze (Langosco et al. 2022; Mini, Turner et al. 2023)."""
