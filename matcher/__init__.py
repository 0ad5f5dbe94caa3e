"""The matcher: settles paper orders against the live best touch."""
