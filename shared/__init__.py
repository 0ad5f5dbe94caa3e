"""Code shared by every process: settings, message schema, Redis names, money helpers."""
