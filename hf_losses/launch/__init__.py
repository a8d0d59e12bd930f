"""Starting runs: launch-config writer, the checks that refuse a contradictory launch, and CPU/gloo settings."""
