"""`make run`: one command that starts Redis (unless REDIS_URL is set) and every process, and stops them together."""
