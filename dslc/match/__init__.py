"""The compiled rule IR and the matcher: compiler, automata, layer
signatures, forward and class matching, qualified-name existence."""
