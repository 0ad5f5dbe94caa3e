"""Recording of the raw exchange frames the ingestors receive (docs/recording.md)."""
