"""One module or package per research line, composing lenses, training and rollouts."""
